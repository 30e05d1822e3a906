"""Compare a measurement set with the truth of a synthetic delivery (CASA's Python).

Usage: python truth_check.py VIS MODEL.npz TRUTH.json COLUMN RESULT.json

MODEL.npz holds the true visibilities `alma-regen synth` predicted for this
EB (before corrupting them), keyed by time and baseline. Per field and spw,
the measured COLUMN (unflagged) is fitted to the model: scale (1 = right
flux), phase (0 = right phases), and the residual rms to compare with the
thermal noise. Used by the tests only.
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "include", "casa_scripts"))
import casa_boot  # noqa: E402,F401

import numpy as np  # noqa: E402
from casatools import msmetadata, table  # noqa: E402


def keys(t, a1, a2):
    # The ASDM round trip stores times in integer nanoseconds: match at 10 ms.
    return np.round(t * 100).astype(np.int64) * 10000 + a1 * 100 + a2


def field_names(vis):
    md = msmetadata()
    md.open(vis)
    try:
        return list(md.fieldnames())
    finally:
        md.close()


def matched(tb, npz, d, fid, column, vis):
    """(COLUMN, FLAG, the true model) of the rows of data description d and field fid, row by
    row (matched by time and baseline); None when there are no such rows."""
    sub = tb.query("DATA_DESC_ID==%d && FIELD_ID==%d" % (d, fid))
    try:
        if sub.nrows() == 0:
            return None
        data, flag = sub.getcol(column), sub.getcol("FLAG")
        k = keys(sub.getcol("TIME"), sub.getcol("ANTENNA1"), sub.getcol("ANTENNA2"))
    finally:
        sub.close()
    mkeys = keys(npz["time%d" % d], npz["a1_%d" % d], npz["a2_%d" % d])
    order = np.argsort(mkeys)
    pos = order[np.searchsorted(mkeys[order], k)]
    if not np.array_equal(mkeys[pos], k):
        raise SystemExit("rows of %s do not match the model" % vis)
    return data, flag, npz["model%d" % d][:, :, pos]


def main(vis, model_path, truth_path, column, result_path):
    truth = json.load(open(truth_path))
    npz = np.load(model_path)
    names = field_names(vis)
    tb = table()
    tb.open(vis)
    out = []
    for d in np.unique(tb.getcol("DATA_DESC_ID")):
        if "model%d" % d not in npz:
            continue
        for fid, fname in enumerate(names):
            rows = matched(tb, npz, d, fid, column, vis)
            if rows is None:
                continue
            data, flag, model = rows
            ok = ~flag
            D, M = data[ok], model[ok]
            cross = np.sum(np.conj(M) * D)
            resid = D - M
            out.append({
                "spw": int(d), "field": fname, "n": int(ok.sum()),
                "scale": float(np.real(cross) / np.sum(np.abs(M) ** 2)),
                "phase_deg": float(np.degrees(np.angle(cross))),
                # rms of one real component: comparable with the synth noise_jy
                "resid_rms": float(np.sqrt(np.mean(np.abs(resid) ** 2) / 2)),
                "max_abs": float(np.abs(D).max()),
                "flag_fraction": float(flag.mean()),
            })
    tb.close()
    json.dump({"noise_jy": truth["noise_jy_per_visibility_component"], "rows": out}, open(result_path, "w"), indent=1)


# ---------------------------------------------------------------- --pol
# Usage: python truth_check.py --pol VIS MODEL.npz COLUMN RESULT.json
# For a full-polarisation MS (XX XY YX YY) of the polarisation style: per field, over its
# unflagged data, the fractional Stokes of COLUMN in the sky frame (what a calibration
# applied with parang=True gives), q = Re sum(XX - YY) / sum(XX + YY) and
# u = Re sum(XY + YX) / sum(XX + YY) (weighted by the model's I), beside the same of the true model (synth's sky-frame
# visibilities), and the rms of the cross hands' difference from the model.

def fractions(v, m):
    """q, u of the four products v, each visibility weighted by the model's Stokes I (a matched
    filter: the target's sources are off the phase centre, their visibilities turn in phase)."""
    w = np.conj(0.5 * (m[0] + m[3]))
    i = np.sum(w * (v[0] + v[3]))
    return float(np.real(np.sum(w * (v[0] - v[3])) / i)), float(np.real(np.sum(w * (v[1] + v[2])) / i))


def pol_main(vis, model_path, column, result_path):
    npz = np.load(model_path)
    names = field_names(vis)
    tb = table()
    tb.open(vis)
    out = {}
    try:
        for fid, name in enumerate(names):
            data, model = [], []
            for d in np.unique(tb.getcol("DATA_DESC_ID")):
                if "model%d" % d not in npz:
                    continue
                rows = matched(tb, npz, d, fid, column, vis)
                if rows is None:
                    continue
                col, flag, truth = rows
                ok = ~flag.any(axis=0)  # a visibility with all four products
                data.append(col[:, ok])
                model.append(truth[:, ok])
            if not data:
                continue
            v, m = np.concatenate(data, axis=1), np.concatenate(model, axis=1)
            q, u = fractions(v, m)
            qm, um = fractions(m, m)
            out[name] = {"q": q, "u": u, "q_model": qm, "u_model": um, "n": int(v.shape[1]),
                         "cross_resid_rms": float(np.sqrt(np.mean(np.abs(v[1:3] - m[1:3]) ** 2)))}
    finally:
        tb.close()
    with open(result_path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    (pol_main if "--pol" in sys.argv[1:] else main)(*args)
