"""Compare two restores of one EB, row by row, on its science spws (CASA's Python).

Usage: python compare_restores.py OURS.ms THEIRS.ms RESULT.json

Both MSs are imported from the same ASDM, so their rows must line up (same
TIME, ANTENNA1, ANTENNA2 per spw): anything else is reported as a mismatch,
never aligned by guessing. Per science spw (OBSERVE_TARGET, more than 4
channels): the largest relative difference of CORRECTED_DATA (|ours - theirs|
/ |theirs|, element by element; an element that is 0 in theirs must be 0 in
ours), the largest absolute difference and the largest |theirs|, the number of FLAG elements that differ, and how far THEIRS'
CORRECTED_DATA is from its DATA on unflagged data (the proof a calibration was
applied). Used by the tests and bench only.
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "include", "casa_scripts"))
import casa_boot  # noqa: E402,F401

import numpy as np  # noqa: E402
from casatools import msmetadata, table  # noqa: E402

import msinfo  # noqa: E402


def spw_of_ddid(vis):
    tb = table()
    tb.open(os.path.join(vis, "DATA_DESCRIPTION"))
    try:
        return {d: int(s) for d, s in enumerate(tb.getcol("SPECTRAL_WINDOW_ID"))}
    finally:
        tb.close()


def columns(vis, ddid, names):
    tb = table()
    tb.open(vis)
    try:
        sub = tb.query("DATA_DESC_ID==%d" % ddid, sortlist="TIME,ANTENNA1,ANTENNA2")
        try:
            return {n: sub.getcol(n) for n in names} if sub.nrows() else None
        finally:
            sub.close()
    finally:
        tb.close()


def max_relative(a, b):
    """max |a - b| / |b|; an element where b is 0 counts as inf unless a is 0 too."""
    diff = np.abs(a - b)
    ref = np.abs(b)
    zero = ref == 0
    if np.any(diff[zero] != 0):
        return float("inf")
    return float(np.max(diff[~zero] / ref[~zero])) if np.any(~zero) else 0.0


def compare_spw(ours, theirs, ddid):
    cols = ("TIME", "ANTENNA1", "ANTENNA2", "DATA", "CORRECTED_DATA", "FLAG")
    a, b = columns(ours, ddid, cols), columns(theirs, ddid, cols)
    if a is None or b is None:
        return {"mismatch": "no rows in %s" % ("ours" if a is None else "theirs")}
    for key in ("TIME", "ANTENNA1", "ANTENNA2"):
        if a[key].shape != b[key].shape or not np.array_equal(a[key], b[key]):
            return {"mismatch": "%s differs: the rows do not line up" % key}
    good = ~b["FLAG"]
    return {
        "rows": int(a["TIME"].size),
        "max_rel_corrected": max_relative(a["CORRECTED_DATA"], b["CORRECTED_DATA"]),
        # With leakage corrections a small cross-hand element takes a part of a large parallel-hand
        # one: float32 rounding in another order of operations shows there as a relative difference
        # of 1e-4; measured against the spw's largest element it stays at the float32 epsilon.
        "max_abs_corrected": float(np.max(np.abs(a["CORRECTED_DATA"] - b["CORRECTED_DATA"]))),
        "max_abs_theirs": float(np.max(np.abs(b["CORRECTED_DATA"]))),
        "flag_differences": int(np.count_nonzero(a["FLAG"] != b["FLAG"])),
        "flagged_fraction": float(1 - good.mean()),
        "theirs_corrected_vs_data": max_relative(b["CORRECTED_DATA"][good], b["DATA"][good]) if good.any() else 0.0,
    }


def has_corrected(vis):
    tb = table()
    tb.open(vis)
    try:
        return "CORRECTED_DATA" in tb.colnames()
    finally:
        tb.close()


def main(ours, theirs, result_path):
    science = msinfo.science_spws(theirs)
    ddids_ours, ddids_theirs = spw_of_ddid(ours), spw_of_ddid(theirs)
    out = {"ours": ours, "theirs": theirs, "science_spws": science, "spws": {}}
    missing = [name for name, vis in (("ours", ours), ("theirs", theirs)) if not has_corrected(vis)]
    if missing:
        out["mismatch"] = "no CORRECTED_DATA in %s: nothing was applied" % " and ".join(missing)
    elif ddids_ours != ddids_theirs:
        out["mismatch"] = "data descriptions differ: %s vs %s" % (ddids_ours, ddids_theirs)
    else:
        for ddid, spw in sorted(ddids_theirs.items()):
            if spw in science:
                out["spws"][str(spw)] = compare_spw(ours, theirs, ddid)
    with open(result_path, "w") as f:
        json.dump(out, f, indent=1)


# ---------------------------------------------------------------- --split
# Usage: python compare_restores.py --split OURS.ms.split.cal THEIRS.ms.split.cal RESULT.json
# Two <EB>.ms.split.cal of one EB: for scriptForPI's split the structure must be the same (the
# fields, the spw ids that have data, the SPECTRAL_WINDOW rows: reindex=False keeps every row,
# the ASDM_* subtables, the columns); then per spw with data, DATA and FLAG row by row.

def structure(vis):
    tb, md = table(), msmetadata()
    tb.open(vis)
    try:
        columns = sorted(tb.colnames())
        ddids = sorted({int(d) for d in tb.getcol("DATA_DESC_ID")})
    finally:
        tb.close()
    tb.open(os.path.join(vis, "SPECTRAL_WINDOW"))
    spw_rows = tb.nrows()
    tb.close()
    spw_of = spw_of_ddid(vis)
    md.open(vis)
    try:
        fields = sorted(md.fieldnames())
        intents = sorted(md.intents())
    finally:
        md.close()
    return {"columns": columns, "spws": sorted(spw_of[d] for d in ddids), "spw_rows": spw_rows,
            "fields": fields, "intents": intents,
            "asdm_subtables": sorted(n for n in os.listdir(vis) if n.startswith("ASDM_"))}


def compare_data(ours, theirs, ddid):
    cols = ("TIME", "ANTENNA1", "ANTENNA2", "FIELD_ID", "DATA", "FLAG")
    a, b = columns(ours, ddid, cols), columns(theirs, ddid, cols)
    if a is None or b is None:
        return {"mismatch": "no rows in %s" % ("ours" if a is None else "theirs")}
    for key in ("TIME", "ANTENNA1", "ANTENNA2", "FIELD_ID"):
        if a[key].shape != b[key].shape or not np.array_equal(a[key], b[key]):
            return {"mismatch": "%s differs: the rows do not line up" % key}
    return {"rows": int(a["TIME"].size),
            "max_rel_data": max_relative(a["DATA"], b["DATA"]),
            "flag_differences": int(np.count_nonzero(a["FLAG"] != b["FLAG"])),
            "flagged_fraction": float(b["FLAG"].mean())}


def main_split(ours, theirs, result_path):
    out = {"ours": structure(ours), "theirs": structure(theirs), "spws": {}}
    ddids_ours, ddids_theirs = spw_of_ddid(ours), spw_of_ddid(theirs)
    if ddids_ours != ddids_theirs:
        out["mismatch"] = "data descriptions differ: %s vs %s" % (ddids_ours, ddids_theirs)
    else:
        for ddid, spw in sorted(ddids_theirs.items()):
            if spw in out["theirs"]["spws"]:
                out["spws"][str(spw)] = compare_data(ours, theirs, ddid)
    with open(result_path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    (main_split if "--split" in sys.argv[1:] else main)(*args[:3])
