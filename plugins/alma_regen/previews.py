"""Image previews for the products' summary page: worth looking at, readable at a glance.

One PNG per regenerated image: the regenerated image beside the delivered one
and their difference, each on sky axes (RA/Dec, astropy's WCSAxes on the
delivered image's FITS header) with a colour bar and the restoring beam, and the
fidelity numbers under them (peak ratio, peak offset, rms ratio, largest
difference / rms, verdict). The two images share one colour scale; the
difference is shown in units of the delivered rms, as fidelity judges it. A
cube shows the delivered image's peak channel. An image with no delivered
counterpart gets a single panel.

The planes come from the CASA child of the fidelity check
(include/casa_scripts/image_stats.py, "planes"): the regenerated image is
already regridded there onto the delivered grid. `alt_text` says the same in
words for the page's <img alt>. This module does not import Airflow.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

DPI = 90
HEIGHT_IN = 4.2  # inches: square sky panels, the title above and the numbers below
PANEL_IN = 4.6  # inches of width per panel (its colour bar included)


def numbers(entry: dict) -> dict:
    """The fidelity numbers of one fidelity.json entry (None where not measured)."""
    c = entry.get("checks") or {}
    peak, pos, rms, diff = (c.get(k) or {} for k in ("peak", "peak_position", "rms", "difference"))
    def ratio(a, b):
        return a / b if a is not None and b else None
    return {"peak_ratio": ratio(peak.get("regenerated"), peak.get("delivered")),
            "offset_arcsec": pos.get("offset_arcsec"), "offset_beams": pos.get("offset_beams"),
            "rms_ratio": ratio(rms.get("regenerated"), rms.get("delivered")),
            "diff_max_sigma": diff.get("diff_max_abs_sigma"), "diff_rms_sigma": diff.get("diff_rms_sigma"),
            "diff_limit_sigma": diff.get("limit_sigma"), "status": entry.get("status")}


def _g(v, fmt):
    return "n/a" if v is None else format(v, fmt)


def numbers_text(entry: dict) -> str:
    """The numbers in one line: what the preview's caption and its alt text say."""
    n = numbers(entry)
    if entry.get("status") == "no counterpart":
        return "no delivered image to compare with"
    return (f"peak ratio {_g(n['peak_ratio'], '.3f')}; peak offset {_g(n['offset_arcsec'], '.3f')} arcsec "
            f"({_g(n['offset_beams'], '.2f')} beams); rms ratio {_g(n['rms_ratio'], '.3f')}; "
            f"max |difference| {_g(n['diff_max_sigma'], '.1f')} x rms"
            + (f" (limit {n['diff_limit_sigma']:.1f})" if n["diff_limit_sigma"] is not None else "")
            + f"; rms of the difference {_g(n['diff_rms_sigma'], '.2f')} x rms; fidelity {entry.get('status')}")


def alt_text(entry: dict, channel: int | None = None) -> str:
    where = f" (channel {channel}, the delivered peak)" if channel else ""
    if entry.get("status") == "no counterpart":
        return (f"Regenerated image {entry['image']}{where} on sky axes with its beam; "
                "no delivered image to compare with.")
    return (f"Regenerated image {entry['image']}{where} beside the delivered image {entry.get('counterpart')} "
            f"and their difference, on sky axes with colour bars and beams: {numbers_text(entry)}.")


def _header(fits_path: Path):
    from astropy.io import fits
    with fits.open(fits_path, memmap=False) as hdul:
        return hdul[0].header.copy()


def _beam(ax, beam: dict | None):
    if not beam:
        return
    import astropy.units as u
    from astropy.visualization.wcsaxes import add_beam
    try:
        add_beam(ax, major=beam["major_arcsec"] * u.arcsec, minor=beam["minor_arcsec"] * u.arcsec,
                 angle=beam.get("pa_deg", 0.0) * u.deg, corner="bottom left", frame=True,
                 facecolor="#9ca3af", edgecolor="black", linewidth=1.0, borderpad=0.4)
    except Exception as exc:  # noqa: BLE001 - a preview without its beam is still a preview
        log.warning("preview: beam not drawn: %s", exc)


def _sky_axes(fig, pos, wcs, title):
    ax = fig.add_subplot(*pos, projection=wcs)
    ax.set_title(title, fontsize=10)
    lon, lat = ax.coords[0], ax.coords[1]
    lon.set_axislabel("Right ascension (ICRS)", fontsize=8)
    lat.set_axislabel("Declination", fontsize=8)
    lon.set_major_formatter("hh:mm:ss.s")
    lat.set_major_formatter("dd:mm:ss")
    lon.set_ticklabel(size=7, exclude_overlapping=True)
    lat.set_ticklabel(size=7, exclude_overlapping=True)
    lon.set_ticks(number=4)
    lat.set_ticks(number=4)
    return ax


def render(entry: dict, planes: Path, fits_path: Path, out: Path, *, regen_beam=None, delivered_beam=None,
           rms: float | None = None, unit: str = "Jy/beam") -> dict:
    """Write the preview PNG of one fidelity entry; return {path, alt, channel}.

    planes: the .npz of image_stats.py (a pair's, or an unpaired image's own);
    fits_path: the FITS whose sky grid the planes are on (the delivered image for a pair).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from astropy.visualization import AsinhStretch, ImageNormalize
    from astropy.wcs import WCS, FITSFixedWarning

    data = np.load(planes)
    channel = int(data["channel"])
    with warnings.catch_warnings():
        # CASA's FITS headers make astropy "fix" OBSGEO/MJD-OBS, loudly; nothing is wrong.
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(_header(fits_path)).celestial
    paired = "delivered" in data.files
    regen = data["regenerated"] if paired else data["image"]
    finite = regen[np.isfinite(regen)]
    peak = float(np.nanmax(regen)) if finite.size else 1.0
    noise = rms or (1.4826 * float(np.median(np.abs(finite - np.median(finite)))) if finite.size else 0.0)
    # One scale for both images: from -3 rms to the brighter peak, asinh so faint structure shows.
    if paired:
        deliv = data["delivered"]
        peak = max(peak, float(np.nanmax(deliv)) if np.isfinite(deliv).any() else peak)
    norm = ImageNormalize(vmin=-3 * noise, vmax=peak, stretch=AsinhStretch(0.1))
    panels = 3 if paired else 1
    fig = plt.figure(figsize=(PANEL_IN * panels, HEIGHT_IN), dpi=DPI)
    cmap = plt.get_cmap("inferno").with_extremes(bad="#555555")
    shown = [("Regenerated", regen, regen_beam)]
    if paired:
        shown.append(("Delivered", deliv, delivered_beam))
    for i, (name, img, beam) in enumerate(shown):
        ax = _sky_axes(fig, (1, panels, i + 1), wcs, name + (f" (channel {channel})" if channel else ""))
        im = ax.imshow(img, origin="lower", cmap=cmap, norm=norm, interpolation="nearest")
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        cb.set_label(unit, fontsize=8)
        cb.ax.tick_params(labelsize=7)
        _beam(ax, beam)
    if paired:
        scale = rms or noise or 1.0
        diff = (regen - deliv) / scale
        lim = float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 1.0
        lim = max(lim, 3.0)
        ax = _sky_axes(fig, (1, 3, 3), wcs, "Regenerated − delivered")
        dmap = plt.get_cmap("RdBu_r").with_extremes(bad="#999999")
        im = ax.imshow(diff, origin="lower", cmap=dmap, vmin=-lim, vmax=lim, interpolation="nearest")
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        cb.set_label("difference / delivered rms", fontsize=8)
        cb.ax.tick_params(labelsize=7)
        _beam(ax, delivered_beam)
    status = entry.get("status", "")
    color = {"pass": "#15803d", "fail": "#b91c1c"}.get(status, "#444444")
    fig.suptitle(entry["image"], fontsize=10, y=0.985)
    fig.text(0.5, 0.015, numbers_text(entry), ha="center", va="bottom", fontsize=8.5, color=color, wrap=True)
    fig.subplots_adjust(left=0.07 if panels == 3 else 0.2, right=0.97 if panels == 3 else 0.88,
                        top=0.88, bottom=0.2, wspace=0.55)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=DPI)
    plt.close(fig)
    tmp.replace(out)
    return {"path": str(out), "alt": alt_text(entry, channel), "channel": channel}


def preview_name(image: str) -> str:
    return f"{image}.preview.png"


def render_all(results: list, stats: dict, out_dir: Path, fits_of: dict) -> None:
    """A preview for each fidelity entry that has its planes; adds "preview" to the entry.

    stats: image_stats.py's result; fits_of: image name -> the FITS whose grid its planes are on.
    A preview that cannot be drawn is logged and left out: it never fails the fidelity check.
    """
    for entry in results:
        name = entry["image"]
        pair = (stats.get("pairs") or {}).get(name) or {}
        regen = (stats.get("images") or {}).get("regen:" + name) or {}
        deliv = (stats.get("images") or {}).get("delivered:" + name) or {}
        planes = pair.get("planes") if entry.get("counterpart") else regen.get("plane")
        if not planes or not Path(planes).is_file() or not fits_of.get(name):
            continue
        try:
            entry["preview"] = render(entry, Path(planes), Path(fits_of[name]), out_dir / preview_name(name),
                                      regen_beam=regen.get("beam"), delivered_beam=deliv.get("beam"),
                                      rms=deliv.get("rms") if entry.get("counterpart") else regen.get("rms"),
                                      unit=deliv.get("unit") or regen.get("unit") or "Jy/beam")
        except Exception as exc:  # noqa: BLE001
            log.warning("preview of %s not drawn: %s", name, exc)
