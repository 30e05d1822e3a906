"""Continuum of a delivered cube over given channel ranges, and the cube minus it (CASA's Python).

Usage: python image_contsub.py JOB.json RESULT.json

JOB: {"items": [{"cube": path (FITS or CASA image), "ranges_ghz": [[lo, hi], ...] (LSRK),
                 "line_out": CASA image path or null,
                 "cont_image": path or null, "cont_out": CASA image path or null}]}
The imaging pipeline images the continuum over the line-free channels that
hif_findcont chose, and its cubes from continuum-subtracted data
(hif_uvcontsub). A manually imaged delivery's continuum image holds every
channel and its cubes the continuum: to compare like with like, the same
channel ranges are applied to the delivered cube here.
line_out: the cube minus its mean over the channels inside the ranges (a flat
continuum, order 0). cont_out: cont_image (the delivered continuum of all
channels, on the cube's sky grid) plus the cube's (mean over the ranges -
mean over all channels): the line channels' share taken out, the delivered
continuum image's own cleaning kept (a cube cleaned less deeply than its
continuum image would bring its sidelobes into a mean of its planes). Only
when that share is significant where the continuum peaks (LINE_SIGMA): when
findcont left channels out for noise, the delivered image is the same
quantity, and cont_out is not written (its result says so).
RESULT: per item the channels used, or the problem that stopped it.
This file must not import airflow or alma_regen.
"""
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import casa_boot  # noqa: E402

import numpy as np  # noqa: E402
from casatools import image  # noqa: E402

casa_boot.casa_log_to_console()
# A line is there when the left-out channels' share at the continuum peak is
# at least this many times the share's rms.
LINE_SIGMA = 5.0


def channel_freqs_ghz(ia):
    """LSRK frequency of every channel of the open image (its spectral axis and that axis' length)."""
    cs = ia.coordsys()
    try:
        axis = cs.findcoordinate("spectral")["pixel"][0]
        cs.setconversiontype(spectral="LSRK")
        shape = ia.shape()
        pix = [0.0] * len(shape)
        freqs = []
        for k in range(shape[axis]):
            pix[axis] = float(k)
            freqs.append(cs.toworld(pix, "n")["numeric"][axis] / 1e9)
        return int(axis), np.array(freqs)
    finally:
        cs.done()


def live_planes(data, axis):
    """The planes that hold data: tclean writes a plane whose data are all
    flagged (a spw's flagged edge channels) as zeros, and one barely covered
    (the edge of a regridded spw) nearly so; neither is in a continuum image."""
    level = np.array([np.nanmedian(np.abs(np.take(data, k, axis=axis))) for k in range(data.shape[axis])])
    level = np.nan_to_num(level)
    return [k for k, v in enumerate(level) if v > 0.1 * np.median(level)]


def selected(freqs, ranges):
    lo_hi = [(min(r), max(r)) for r in ranges]
    return [k for k, f in enumerate(freqs) if any(lo <= f <= hi for lo, hi in lo_hi)]


def write_like(template, outfile, pixels):
    """A CASA image with the coordinates, beams and mask of `template`, holding `pixels`."""
    shutil.rmtree(outfile, ignore_errors=True)
    ia = image()
    ia.fromimage(outfile=outfile, infile=template)
    try:
        ia.putchunk(np.where(np.isfinite(pixels), pixels, 0.0))
        mask = ia.getchunk(getmask=True) & np.isfinite(pixels)
        ia.putregion(pixelmask=mask)
    finally:
        ia.close()


def derive(item):
    ia = image()
    ia.open(item["cube"])
    try:
        axis, freqs = channel_freqs_ghz(ia)
        data = ia.getchunk().astype(np.float64)
        data[~ia.getchunk(getmask=True)] = np.nan
    finally:
        ia.close()
    live = live_planes(data, axis)
    chans = [k for k in selected(freqs, item["ranges_ghz"]) if k in live]
    if not chans:
        return {"cube": item["cube"], "problem": "no channel of the cube lies in the continuum ranges %s (cube: "
                "%.4f-%.4f GHz)" % (item["ranges_ghz"], freqs.min(), freqs.max())}
    with np.errstate(all="ignore"):
        cont = np.nanmean(np.take(data, chans, axis=axis), axis=axis, keepdims=True)
    if item.get("line_out"):
        line = data - cont
        dead = [k for k in range(data.shape[axis]) if k not in live]
        # A plane without data stays blank: a flagged channel has no line to compare.
        index = [slice(None)] * data.ndim
        index[axis] = dead
        line[tuple(index)] = np.nan
        write_like(item["cube"], item["line_out"], line)
    if item.get("cont_out"):
        with np.errstate(all="ignore"):
            share = cont - np.nanmean(np.take(data, live, axis=axis), axis=axis, keepdims=True)
        ia.open(item["cont_image"])
        try:
            base = ia.getchunk().astype(np.float64)
            base[~ia.getchunk(getmask=True)] = np.nan
        finally:
            ia.close()
        if base.shape[:2] != share.shape[:2]:
            return {"cube": item["cube"], "problem": "the cube's sky grid %s is not the continuum image's %s"
                    % (list(share.shape[:2]), list(base.shape[:2]))}
        share = share.reshape(base.shape[:2] + (1,) * (base.ndim - 2))
        sigma = significance(share, base)
        if sigma < LINE_SIGMA:
            # Channels left out for noise, not for a line: the delivered image is the same quantity.
            return {"cube": item["cube"], "channels": chans, "nchan": len(freqs), "line_share_sigma": sigma,
                    "cont_out": None}
        write_like(item["cont_image"], item["cont_out"], base + share)
        return {"cube": item["cube"], "channels": chans, "nchan": len(freqs), "line_share_sigma": sigma,
                "cont_out": item["cont_out"]}
    return {"cube": item["cube"], "channels": chans, "nchan": len(freqs)}


def significance(share, base):
    """The share of the left-out channels where the continuum peaks, in units of its robust rms."""
    v = share[np.isfinite(share)]
    rms = 1.4826 * np.median(np.abs(v - np.median(v))) if v.size else 0.0
    peak = np.unravel_index(np.nanargmax(base), base.shape)
    return float(abs(share[peak]) / rms) if rms else 0.0


def contsub(job):
    return {"items": [derive(item) for item in job["items"]]}


if __name__ == "__main__":
    casa_boot.run_job(contsub, *casa_boot.script_args())
