"""Native imaging on modular CASA: continuum and cube per science target and spw.

Usage: python image_native.py plan JOB.json RESULT.json
       python image_native.py unit JOB.json RESULT.json

plan  JOB {"vis": [calibrated MSs]} -> RESULT {"units": [...], "datacolumn", "longest_baseline_m"}
      One unit per (science target, science spw); spws of different EBs are the
      same window when their names (else frequencies) agree. Parameters come
      from the data as the pipeline derives them (imaging_params): cell from
      the longest baseline, imsize from the 12-m primary beam.
unit  JOB {"unit": <a unit of plan>, "workdir", "outdir", "mous_file", "modes": ["cont", "cube"],
           "niter", "nsigma", "pbmask"}
      Per mode: a dirty image (the noise before cleaning, recorded), then
      tclean to a threshold of nsigma x the residual's robust rms (tclean
      re-measures it every major cycle), masked to the primary beam above
      pbmask, pb-corrected; the .image.pbcor and .pb exported as FITS with the
      ALMA product names member.<MOUS>.<target>_sci.spw<N>.<cont|cube>.I.{pbcor,pb}.fits.
This file must not import airflow or alma_regen.
"""
import os
import re
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import casa_boot  # noqa: E402

import numpy as np  # noqa: E402
from casatasks import exportfits, tclean  # noqa: E402
from casatools import image, msmetadata, table  # noqa: E402

import imaging_params  # noqa: E402
import msinfo  # noqa: E402

casa_boot.casa_log_to_console()
TARGET_INTENT = "OBSERVE_TARGET#ON_SOURCE"
IMAGE_EXTS = (".image", ".pb", ".psf", ".residual", ".model", ".sumwt", ".mask", ".image.pbcor", ".weight")


class ImagingError(RuntimeError):
    pass


# ------------------------------------------------------------------ plan

def has_column(vis, name):
    tb = table()
    tb.open(vis)
    try:
        return name in tb.colnames()
    finally:
        tb.close()


def longest_baseline(vis):
    tb = table()
    tb.open(os.path.join(vis, "ANTENNA"))
    try:
        pos = tb.getcol("POSITION").T
    finally:
        tb.close()
    return max(float(np.linalg.norm(a - b)) for a in pos for b in pos)


def spw_key(name, freq):
    # ALMA spw names (X..#BB_1#SW-01#FULL_RES) identify a window across EBs;
    # without a name, the centre frequency to 1 kHz does.
    return name if name and name != "none" else "%.0f" % (freq / 1e3)


def parent_spw_ids(vis):
    """Original spw ids of a split MS, by name, from the MS it was split from (<EB>.ms
    beside it, following links): the product names carry the original ids."""
    real = os.path.realpath(vis)
    if not real.endswith(".split.cal"):
        return {}
    parent = real[: -len(".split.cal")]
    if not os.path.isdir(parent):
        return {}
    md = msmetadata()
    md.open(parent)
    try:
        return {spw_key(md.namesforspws(s)[0], md.meanfreq(s)): int(s) for s in range(md.nspw())}
    finally:
        md.close()


def describe(vis):
    """Science targets and science spws (target intent, more than 4 channels) of one MS."""
    md = msmetadata()
    md.open(vis)
    try:
        intents = [i for i in md.intents() if i.startswith("OBSERVE_TARGET")]
        if not intents:
            raise ImagingError("%s has no OBSERVE_TARGET data: nothing to image" % vis)
        targets = set()
        for intent in intents:
            targets.update(md.fieldnames()[int(f)] for f in md.fieldsforintent(intent))
        spws = {}
        # The science spws, by the one rule scriptForPI uses (msinfo).
        for s in msinfo.science_spws(vis):
            freq = float(md.meanfreq(s))
            spws[spw_key(md.namesforspws(s)[0], freq)] = {"id": s, "freq_hz": freq, "nchan": int(md.nchan(s))}
        return sorted(targets), spws
    finally:
        md.close()


def plan(job):
    vislist = job["vis"]
    columns = {v: ("corrected" if has_column(v, "CORRECTED_DATA") else "data") for v in vislist}
    if len(set(columns.values())) > 1:
        raise ImagingError("the calibrated MSs mix split (DATA) and unsplit (CORRECTED_DATA) data: %s" % columns)
    bmax = max(longest_baseline(v) for v in vislist)
    windows = {}
    targets = set()
    for v in vislist:
        tg, spws = describe(v)
        targets.update(tg)
        original = parent_spw_ids(v)
        for key, s in spws.items():
            w = windows.setdefault(key, dict(s, spw=original.get(key, s["id"]), per_vis={}))
            w["per_vis"][v] = s["id"]
    units = []
    for target in sorted(targets):
        for key, w in sorted(windows.items(), key=lambda kv: kv[1]["spw"]):
            p = imaging_params.derive(w["freq_hz"], bmax)
            vis = [v for v in vislist if v in w["per_vis"]]
            units.append({
                "id": "%s.spw%d" % (target, w["spw"]), "target": target, "spw": w["spw"], "spw_name": key,
                "vis": vis, "spw_select": [str(w["per_vis"][v]) for v in vis],
                "datacolumn": columns[vislist[0]], "freq_hz": w["freq_hz"], "nchan": w["nchan"],
                "cell_arcsec": p["cell_arcsec"], "imsize": p["imsize"], "beam_arcsec": p["beam_arcsec"],
                "pb_fwhm_arcsec": p["pb_fwhm_arcsec"],
            })
    return {"units": units, "datacolumn": columns[vislist[0]], "longest_baseline_m": bmax}


# ------------------------------------------------------------------ one unit

def robust_rms(imagename, pbimage, pbmask):
    """1.4826 x MAD of the pixels where the primary beam is above pbmask."""
    ia = image()
    ia.open(imagename)
    data = ia.getchunk()
    ia.close()
    ia.open(pbimage)
    pb = ia.getchunk()
    ia.close()
    v = data[(pb >= pbmask) & np.isfinite(data)]
    if v.size == 0:
        raise ImagingError("%s: no pixel inside the primary beam" % imagename)
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def channels(imagename):
    """The length of an image's spectral axis (CASA images: ra, dec, stokes, freq)."""
    ia = image()
    ia.open(imagename)
    try:
        return int(ia.shape()[3])
    finally:
        ia.close()


def safe_name(text):
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


def image_mode(job, mode):
    u = job["unit"]
    base = "member.%s.%s_sci.spw%d.%s.I" % (job["mous_file"], safe_name(u["target"]), u["spw"], mode)
    imagename = os.path.join(job["workdir"], base)
    for ext in IMAGE_EXTS:
        shutil.rmtree(imagename + ext, ignore_errors=True)
    common = dict(vis=u["vis"], imagename=imagename, field=u["target"], spw=u["spw_select"],
                  intent=TARGET_INTENT, datacolumn=u["datacolumn"],
                  specmode="mfs" if mode == "cont" else "cube", imsize=u["imsize"],
                  cell="%.4farcsec" % u["cell_arcsec"], stokes="I", gridder="standard", deconvolver="hogbom",
                  weighting="briggs", robust=0.5, pblimit=job["pbmask"], interactive=False)
    t0 = time.monotonic()
    tclean(niter=0, **common)
    dirty_rms = robust_rms(imagename + ".residual", imagename + ".pb", job["pbmask"])
    # Threshold from the noise: tclean stops at nsigma x the robust rms of
    # the residual inside the mask, re-measured every major cycle. A fixed
    # threshold from the dirty image would stop too early: its rms still
    # holds the sources' sidelobes (recorded as dirty_rms_jy).
    threshold = 0.0
    # niter counts the whole image: a cube's every channel holds the sources and
    # needs as many iterations as the continuum image (niter per channel).
    niter = job["niter"] * (channels(imagename + ".residual") if mode == "cube" else 1)
    tclean(niter=niter, threshold="%.6fJy" % threshold, nsigma=job["nsigma"], usemask="pb",
           pbmask=job["pbmask"], calcpsf=False, calcres=False, restart=True, pbcor=True, **common)
    final_rms = robust_rms(imagename + ".residual", imagename + ".pb", job["pbmask"])
    outputs = {}
    for kind, src in (("pbcor", imagename + ".image.pbcor"), ("pb", imagename + ".pb")):
        if not os.path.isdir(src):
            raise ImagingError("tclean did not write %s" % src)
        out = os.path.join(job["outdir"], "%s.%s.fits" % (base, kind))
        exportfits(imagename=src, fitsimage=out, overwrite=True, dropdeg=False)
        outputs[kind] = out
    return {"mode": mode, "imagename": imagename, "fits": outputs, "dirty_rms_jy": dirty_rms,
            "residual_rms_jy": final_rms, "nsigma": job["nsigma"], "niter": niter,
            "seconds": round(time.monotonic() - t0, 3)}


def unit(job):
    os.makedirs(job["workdir"], exist_ok=True)
    os.makedirs(job["outdir"], exist_ok=True)
    return {"unit": job["unit"]["id"], "images": [image_mode(job, m) for m in job["modes"]]}


if __name__ == "__main__":
    mode, job_path, result_path = casa_boot.script_args()
    casa_boot.run_job({"plan": plan, "unit": unit}[mode], job_path, result_path, errors=(ImagingError,),
                      label="IMAGING FAILED")
