"""Statistics of images, differences of image pairs, thumbnails (CASA's Python).

Usage: python image_stats.py JOB.json RESULT.json

JOB: {"images": [{"id", "path", "pb": path or null}],
      "pairs":  [{"id", "a", "b"}]            (ids of "images": a regenerated, b delivered)
      "workdir": folder for regridded copies,
      "thumbnails": folder for PNGs or null,
      "planes": folder or null}               (previews: the planes shown, as .npz)

Per image (FITS or CASA image): shape, cell, peak (the maximum), where it is
(pixel and RA/Dec), the rms (robust: 1.4826 x the median absolute deviation,
so sources barely move it; on a pb-corrected image the noise is first
flattened by multiplying with the primary beam when one is given), the
restoring beam (the common beam of a cube). Per pair: b's grid is the
reference; a is regridded onto it when the grids differ, and the pixel-wise
difference a - b is reported in units of b's rms. With "planes", the plane
of each pair that previews show (b's peak channel) is saved as PAIR.npz
(regenerated: a on b's grid, delivered: b, channel), and each image's own peak
plane as ID.npz (image, channel); arrays in FITS order [y, x].
This file must not import airflow or alma_regen.
"""
import math
import os
import re
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import casa_boot  # noqa: E402

import numpy as np  # noqa: E402
from casatasks import imregrid, imsmooth  # noqa: E402
from casatools import image  # noqa: E402

casa_boot.casa_log_to_console()
ARCSEC_PER_RAD = 180.0 / math.pi * 3600.0


def load(path):
    """Pixels as float64 with NaN where masked, the coordinate system record, beam and unit."""
    ia = image()
    ia.open(path)
    try:
        data = np.array(ia.getchunk(), dtype=np.float64)
        mask = np.array(ia.getchunk(getmask=True), dtype=bool)
        data[~mask] = np.nan
        # tclean writes a fully flagged channel as a plane of exact zeros: it
        # is blank, not a noise-free measurement (it would fake a low rms).
        planes = data.reshape(data.shape[0], data.shape[1], -1)
        for k in range(planes.shape[2]):
            if not np.any(np.nan_to_num(planes[:, :, k]) != 0):
                planes[:, :, k] = np.nan
        cs = ia.coordsys()
        live = [k for k in range(planes.shape[2]) if np.isfinite(planes[:, :, k]).any()]
        info = {
            "shape": [int(n) for n in ia.shape()],
            "unit": ia.brightnessunit(),
            "beam": beam_of(ia, live),
            "increment_arcsec": [abs(float(x)) * ARCSEC_PER_RAD for x in cs.increment(type="direction")["numeric"]],
            "refval": [float(x) for x in cs.referencevalue(type="direction")["numeric"]],
            "refpix": [float(x) for x in cs.referencepixel(type="direction")["numeric"]],
        }
        return data, cs, info
    finally:
        ia.close()


def beam_of(ia, live):
    rb = ia.restoringbeam()
    if not rb:
        return None
    if "major" not in rb:
        # Per-plane beams of a cube: the typical one, the plane beam of median area
        # among the planes with data. Not the common beam: tclean gives a plane
        # with no or too little data (flagged band edges, a channel the frequency
        # frame shifts onto them) a placeholder beam about 20 % larger, which a
        # common beam would take on.
        beams = rb.get("beams", {})
        plane = sorted((beams["*%d" % k]["*0"] for k in live if "*%d" % k in beams),
                       key=lambda b: arcsec(b["major"]) * arcsec(b["minor"]))
        if not plane:
            return None
        rb = plane[len(plane) // 2]
    return {"major_arcsec": arcsec(rb["major"]), "minor_arcsec": arcsec(rb["minor"]),
            "pa_deg": float((rb.get("positionangle") or rb.get("pa") or {"value": 0.0})["value"])}


def arcsec(q):
    return float(q["value"]) * {"arcsec": 1.0, "deg": 3600.0, "rad": ARCSEC_PER_RAD}.get(q["unit"], 1.0)


def robust_rms(values):
    """1.4826 x MAD; for a cube the median over its planes (channel noise differs)."""
    planes = values.reshape(values.shape[0], values.shape[1], -1)
    per_plane = []
    for k in range(planes.shape[2]):
        v = planes[:, :, k][np.isfinite(planes[:, :, k])]
        if v.size:
            per_plane.append(1.4826 * np.median(np.abs(v - np.median(v))))
    return float(np.median(per_plane)) if per_plane else None


def stats(entry):
    data, cs, info = load(entry["path"])
    finite = np.isfinite(data)
    if not finite.any():
        return dict(info, peak=None, rms=None, problem="every pixel is masked or blank")
    flat = data
    if entry.get("pb"):
        pb, _, _ = load(entry["pb"])
        if pb.shape == data.shape:
            flat = data * pb
    idx = np.unravel_index(np.nanargmax(data), data.shape)
    world = cs.toworld([float(i) for i in idx], "n")["numeric"]
    cs.done()
    return dict(info, peak=float(data[idx]), peak_pixel=[int(i) for i in idx],
                peak_ra_deg=float(world[0]) * 180 / math.pi, peak_dec_deg=float(world[1]) * 180 / math.pi,
                rms=robust_rms(flat), finite_fraction=round(float(finite.mean()), 4))


def same_grid(ia_info, ib_info):
    return (ia_info["shape"] == ib_info["shape"]
            and np.allclose(ia_info["increment_arcsec"], ib_info["increment_arcsec"], rtol=1e-6)
            and np.allclose(ia_info["refval"], ib_info["refval"], rtol=0, atol=1e-10)
            and np.allclose(ia_info["refpix"], ib_info["refpix"], atol=1e-6))


def peak_plane(data):
    """Index of the plane holding the peak (0 for an image of one plane)."""
    planes = data.reshape(data.shape[0], data.shape[1], -1)
    if planes.shape[2] == 1 or not np.isfinite(planes).any():
        return 0
    return int(np.nanargmax(np.nanmax(np.nan_to_num(planes, nan=-np.inf), axis=(0, 1))))


def plane(data, k):
    """Plane k as float32 in FITS order [y, x] (CASA arrays are [x, y, ...])."""
    return np.ascontiguousarray(data.reshape(data.shape[0], data.shape[1], -1)[:, :, k].T, dtype=np.float32)


def compare(a_path, b_path, b_rms, workdir, pair_id, planes_out=None):
    a, _, a_info = load(a_path)
    b, _, b_info = load(b_path)
    regridded = False
    if not same_grid(a_info, b_info):
        # imregrid reads its template only as a CASA image, not FITS.
        template, out = (os.path.join(workdir, "%s.%s" % (pair_id, x)) for x in ("template", "regrid"))
        for p in (template, out):
            shutil.rmtree(p, ignore_errors=True)
        ia = image()
        ia.fromimage(outfile=template, infile=b_path)
        ia.close()
        source = a_path
        if a_info["shape"][2:] == b_info["shape"][2:]:
            # Same planes: regrid the sky only (a cube with one beam per
            # plane cannot be regridded along frequency).
            axes = [0, 1]
        else:
            axes = [-1]
            source = os.path.join(workdir, "%s.common" % pair_id)
            shutil.rmtree(source, ignore_errors=True)
            imsmooth(imagename=a_path, kernel="commonbeam", outfile=source, overwrite=True)
        imregrid(imagename=source, template=template, output=out, overwrite=True, axes=axes)
        if source != a_path:
            shutil.rmtree(source, ignore_errors=True)
        a, _, _ = load(out)
        for p in (template, out):
            shutil.rmtree(p, ignore_errors=True)
        regridded = True
    if a.shape != b.shape:
        return {"regridded": regridded, "problem": "shapes differ after regridding: %s vs %s"
                % (list(a.shape), list(b.shape))}
    if planes_out:
        k = peak_plane(b)
        np.savez_compressed(planes_out, regenerated=plane(a, k), delivered=plane(b, k), channel=k)
    both = np.isfinite(a) & np.isfinite(b)
    if not both.any() or not b_rms:
        return {"regridded": regridded, "problem": "no pixel is valid in both images"}
    diff = (a - b)[both] / b_rms
    # Planes blank (flagged) in one image only cannot be compared: counted, not judged.
    pa, pb = (x.reshape(x.shape[0], x.shape[1], -1) for x in (a, b))
    blank_a = [not np.isfinite(pa[:, :, k]).any() for k in range(pa.shape[2])]
    blank_b = [not np.isfinite(pb[:, :, k]).any() for k in range(pb.shape[2])]
    return {"regridded": regridded, "pixels": int(both.sum()),
            "planes_blank_only_regenerated": int(sum(x and not y for x, y in zip(blank_a, blank_b))),
            "planes_blank_only_delivered": int(sum(y and not x for x, y in zip(blank_a, blank_b))),
            "diff_max_abs_sigma": float(np.max(np.abs(diff))),
            "diff_rms_sigma": float(np.sqrt(np.mean(diff ** 2)))}


def thumbnail(path, png, title):
    """The peak plane (a cube's brightest channel), for the HTML summary page."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    data, cs, _ = load(path)
    cs.done()
    plane = data.reshape(data.shape[0], data.shape[1], -1)
    if plane.shape[2] > 1 and np.isfinite(plane).any():
        k = int(np.nanargmax(np.nanmax(np.nan_to_num(plane, nan=-np.inf), axis=(0, 1))))
        plane = plane[:, :, k]
    else:
        plane = plane[:, :, 0]
    fig, ax = plt.subplots(figsize=(3, 3), dpi=80)
    ax.imshow(plane.T, origin="lower", cmap="inferno")  # CASA arrays are [x, y]
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def saved(folder, ident):
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, re.sub(r"[^A-Za-z0-9_.+-]", "_", ident) + ".npz")


def measure(job):
    workdir = job.get("workdir") or os.getcwd()
    os.makedirs(workdir, exist_ok=True)
    images = {}
    for entry in job.get("images", []):
        images[entry["id"]] = s = stats(entry)
        s["path"] = entry["path"]
        if job.get("thumbnails") and s.get("peak") is not None:
            os.makedirs(job["thumbnails"], exist_ok=True)
            png = os.path.join(job["thumbnails"], re.sub(r"[^A-Za-z0-9_.+-]", "_", entry["id"]) + ".png")
            thumbnail(entry["path"], png, entry["id"])
            s["thumbnail"] = png
        if job.get("planes") and s.get("peak") is not None:
            s["plane"] = saved(job["planes"], entry["id"])
            data, cs, _ = load(entry["path"])
            cs.done()
            k = peak_plane(data)
            np.savez_compressed(s["plane"], image=plane(data, k), channel=k)
    pairs = {}
    for p in job.get("pairs", []):
        out = saved(job["planes"], "pair:" + p["id"]) if job.get("planes") else None
        pairs[p["id"]] = compare(images[p["a"]]["path"], images[p["b"]]["path"], images[p["b"]].get("rms"),
                                 workdir, p["id"], out)
        if out and os.path.isfile(out):
            pairs[p["id"]]["planes"] = out
    return {"images": images, "pairs": pairs}


if __name__ == "__main__":
    casa_boot.run_job(measure, *casa_boot.script_args())
