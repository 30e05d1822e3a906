"""Fidelity: do the regenerated images match what the observatory delivered?

Every regenerated image in `<member>/imaging/products/` (primary beams aside)
is paired with its counterpart in `<member>/product/` (same file name, else
the same target, spw, mode, Stokes and kind), both are measured in a CASA
child (include/casa_scripts/image_stats.py: peak, peak position, robust rms,
beam; the regenerated image regridded onto the delivered grid when they
differ, and the pixel-wise difference in units of the delivered rms) and the
numbers are judged against tolerances. The result goes to
`<member>/imaging/fidelity.json`, with a preview per image for the summary page
(`imaging/thumbnails/<image>.preview.png`: regenerated, delivered, difference,
on sky axes; alma_regen.previews);
a bad match raises FidelityError with the numbers in the message. An image
without a counterpart is reported as such, never failed.

Tolerances (defaults below) can be given per call, or as a JSON object in
$ALMA_REGEN_FIDELITY_TOLERANCES. This module does not import Airflow.
"""
import json
import logging
import math
import re
from pathlib import Path

from .casa.jobs import CasaJob
from .casa.registry import load_registry
from .casa.runner import CasaRunner
from .errors import PermanentError
from .jsonstore import write_atomic
from .member import Member

log = logging.getLogger(__name__)

SCHEMA = "alma-regen/fidelity/1"
TOLERANCES_ENV = "ALMA_REGEN_FIDELITY_TOLERANCES"
DEFAULT_TOLERANCES = {
    # Peak: relative difference, unless within peak_sigma x the delivered rms
    # (a faint peak is noise-limited, a percentage means nothing there).
    "peak_rel": 0.05,
    "peak_sigma": 3.0,
    # Peak position, in beams (checked only where the delivered peak is a
    # detection: at least detection_sigma x rms).
    "peak_offset_beams": 0.25,
    "detection_sigma": 5.0,
    "rms_rel": 0.30,
    "beam_rel": 0.10,
    # The pixel-wise difference in units of the delivered rms: its rms over
    # the image (about 1 when the images differ by noise alone), and its
    # largest value (or peak_rel of the peak, whichever is larger: a cube's
    # partly flagged edge channel or a regrid near a bright source moves a
    # few pixels by far more than the noise).
    "diff_rms_sigma": 1.5,
    "diff_max_sigma": 20.0,
}
# member.<MOUS>.<target>_<intent>.spw<ids>.<mode>[.<datatype>].<stokes>.<kind>.fits (ALMA product
# names). Pipelines from 2024 on insert the data type (regcal, or selfcal after
# self-calibration) after the mode; it is not part of the key, so that a
# regenerated regcal image pairs with the same image of an older delivery.
_NAME_RE = re.compile(r"^member\.(?P<mous>uid___[^.]+)\.(?P<target>.+)_(?P<intent>[a-z]+)\.spw(?P<spw>[0-9_]+)"
                      r"\.(?P<mode>[A-Za-z]+)(?:\.(?P<datatype>regcal|selfcal))?\.(?P<stokes>[IQUV]+)"
                      r"\.(?P<kind>[a-z.]+)\.fits$")


# Per imaging engine, where its images differ from a delivery's by design.
# The imaging pipeline cleans inside its auto-multithresh mask down to its
# own threshold (8 x the delivered rms on the synthetic delivery), where a
# delivery's script cleans the whole image to 3 x the expected rms: the
# uncleaned sidelobes each leaves differ, and the pixel difference between
# the two images is about 2 x the delivered rms over the whole image
# (measured: 2.0 off the sources, 2.3 with them), not the 1 of two images
# that differ by noise alone. Peak, position, rms and beam stay as strict.
ENGINE_TOLERANCES = {
    "pipeline": {"diff_rms_sigma": 3.0},
}


class FidelityError(PermanentError):
    """A regenerated image does not match its delivered counterpart within tolerance."""


def tolerances(overrides=None, engine: str | None = None) -> dict:
    """The defaults, then the engine's (ENGINE_TOLERANCES), then $ALMA_REGEN_FIDELITY_TOLERANCES, then overrides."""
    tol = dict(DEFAULT_TOLERANCES)
    tol.update(ENGINE_TOLERANCES.get(engine, {}))
    from .config import Settings
    env = Settings.from_env().fidelity_tolerances  # $ALMA_REGEN_FIDELITY_TOLERANCES
    if env:
        try:
            tol.update(json.loads(env))
        except (ValueError, TypeError) as exc:
            raise PermanentError(f"${TOLERANCES_ENV} is not a JSON object: {exc}") from None
    tol.update(overrides or {})
    unknown = set(tol) - set(DEFAULT_TOLERANCES)
    if unknown:
        raise PermanentError(f"unknown fidelity tolerance(s) {sorted(unknown)}; known: {sorted(DEFAULT_TOLERANCES)}")
    return tol


def _key(name: str):
    m = _NAME_RE.match(name)
    if not m:
        return None
    mode = {"mfs": "cont"}.get(m["mode"], m["mode"])
    return (m["target"], m["intent"], m["spw"], mode, m["stokes"], m["kind"])


def _mode(name: str) -> str | None:
    """The imaging mode as named (mfs, cont, cube, ...), before _key maps mfs to cont."""
    m = _NAME_RE.match(name)
    return m["mode"] if m else None


def is_pb(name: str) -> bool:
    return name.endswith(".pb.fits")


def is_sky(name: str) -> bool:
    """An image of the sky: not a primary beam, nor a clean mask (the pipeline exports both)."""
    return not (is_pb(name) or name.endswith(".mask.fits"))


def pb_for(path: Path) -> Path | None:
    """The primary beam image next to a pb-corrected one (…I.pbcor.fits -> …I.pb.fits)."""
    if path.name.endswith(".pbcor.fits"):
        pb = path.with_name(path.name[: -len(".pbcor.fits")] + ".pb.fits")
        return pb if pb.is_file() else None
    return None


def counterparts(regenerated: list, delivered_dir: Path) -> dict:
    """regenerated name -> the delivered Path of the same image, or None."""
    delivered = sorted(p for p in delivered_dir.glob("*.fits") if is_sky(p.name)) if delivered_dir.is_dir() else []
    by_name = {p.name: p for p in delivered}
    by_key = {}
    for p in delivered:
        k = _key(p.name)
        if k:
            by_key.setdefault(k, p)
    out = {}
    for name in regenerated:
        out[name] = by_name.get(name) or by_key.get(_key(name))
    return out


def measure(images: list, pairs: list, workdir: Path, thumbnails: Path | None = None, *, runner=None,
            registry=None, timeout=None, planes: Path | None = None) -> dict:
    """Run image_stats.py on `images` ([{id, path, pb}]) and `pairs` ([{id, a, b}]);
    `planes`: a folder for the planes the previews show."""
    runner = runner or CasaRunner(log)
    registry = registry or load_registry()
    _, result = CasaJob(workdir, "stats").run(
        runner, registry.modular(), "image_stats.py",
        {"images": images, "pairs": pairs, "workdir": str(workdir),
         "thumbnails": str(thumbnails) if thumbnails else None, "planes": str(planes) if planes else None},
        timeout=timeout, label="image statistics")
    return result


def _rel(a, b):
    return (a - b) / abs(b) if b else math.inf


def _separation_arcsec(a, b) -> float:
    ra1, de1, ra2, de2 = map(math.radians, (a["peak_ra_deg"], a["peak_dec_deg"], b["peak_ra_deg"], b["peak_dec_deg"]))
    # Haversine: exact enough at any separation.
    h = math.sin((de2 - de1) / 2) ** 2 + math.cos(de1) * math.cos(de2) * math.sin((ra2 - ra1) / 2) ** 2
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(h)))) * 3600


def judge(name: str, regen: dict, ref: dict, diff: dict, tol: dict) -> dict:
    """Compare one pair; every number and each failed rule (as text) in the result."""
    out = {"image": name, "failures": [], "checks": {}}
    fail = out["failures"]
    if regen.get("peak") is None or ref.get("peak") is None:
        fail.append(f"no valid pixel in the {'regenerated' if regen.get('peak') is None else 'delivered'} image")
        return out
    rms = ref.get("rms") or 0.0
    dpeak = regen["peak"] - ref["peak"]
    rel = _rel(regen["peak"], ref["peak"])
    out["checks"]["peak"] = {"regenerated": regen["peak"], "delivered": ref["peak"], "rel": rel,
                             "sigma": dpeak / rms if rms else None}
    if abs(rel) > tol["peak_rel"] and abs(dpeak) > tol["peak_sigma"] * rms:
        fail.append(f"peak {regen['peak']:.4g} vs delivered {ref['peak']:.4g} {ref.get('unit', '')} "
                    f"({rel * 100:+.1f} %, tolerance {tol['peak_rel'] * 100:.0f} % or {tol['peak_sigma']:g} rms)")
    sep = _separation_arcsec(regen, ref)
    beam = (ref.get("beam") or {}).get("major_arcsec") or (ref.get("increment_arcsec") or [0])[0] * 5
    detected = rms and ref["peak"] >= tol["detection_sigma"] * rms
    out["checks"]["peak_position"] = {"offset_arcsec": sep, "beam_arcsec": beam,
                                      "offset_beams": sep / beam if beam else None, "checked": bool(detected)}
    if detected and beam and sep > tol["peak_offset_beams"] * beam:
        fail.append(f"peak position {sep:.3f} arcsec from the delivered one ({sep / beam:.2f} beams, "
                    f"tolerance {tol['peak_offset_beams']:g})")
    if regen.get("rms") and rms:
        r = _rel(regen["rms"], rms)
        out["checks"]["rms"] = {"regenerated": regen["rms"], "delivered": rms, "rel": r}
        if abs(r) > tol["rms_rel"]:
            fail.append(f"rms {regen['rms']:.3g} vs delivered {rms:.3g} ({r * 100:+.1f} %, "
                        f"tolerance {tol['rms_rel'] * 100:.0f} %)")
    rb, db = regen.get("beam"), ref.get("beam")
    if rb and db:
        rel_major = _rel(rb["major_arcsec"], db["major_arcsec"])
        rel_minor = _rel(rb["minor_arcsec"], db["minor_arcsec"])
        out["checks"]["beam"] = {"regenerated": rb, "delivered": db, "rel_major": rel_major, "rel_minor": rel_minor}
        if max(abs(rel_major), abs(rel_minor)) > tol["beam_rel"]:
            fail.append(f"beam {rb['major_arcsec']:.3f}x{rb['minor_arcsec']:.3f} vs delivered "
                        f"{db['major_arcsec']:.3f}x{db['minor_arcsec']:.3f} arcsec (tolerance "
                        f"{tol['beam_rel'] * 100:.0f} %)")
    out["checks"]["difference"] = diff
    if diff.get("problem"):
        fail.append(f"pixel difference: {diff['problem']}")
    else:
        limit = max(tol["diff_max_sigma"], tol["peak_rel"] * abs(ref["peak"]) / rms if rms else 0.0)
        diff["limit_sigma"] = limit
        if diff["diff_rms_sigma"] > tol["diff_rms_sigma"]:
            fail.append(f"pixel difference rms {diff['diff_rms_sigma']:.2f} x the delivered rms "
                        f"(tolerance {tol['diff_rms_sigma']:g})" + (" after regridding" if diff.get("regridded") else ""))
        if diff["diff_max_abs_sigma"] > limit:
            fail.append(f"largest pixel difference {diff['diff_max_abs_sigma']:.2f} x the delivered rms "
                        f"(rms of the difference {diff['diff_rms_sigma']:.2f}; tolerance {limit:.2f})"
                        + (" after regridding" if diff.get("regridded") else ""))
    return out


def check_fidelity(member_dir, tolerances_=None, *, runner=None, registry=None, timeout=None,
                   raise_on_failure: bool = True) -> dict:
    """Compare every regenerated image with the delivery's; write imaging/fidelity.json.

    Raises FidelityError (after writing the file) when a pair is out of tolerance.
    """
    member = Member.coerce(member_dir)
    d = member.imaging
    record = _imaging_record(member)
    tol = tolerances(tolerances_, record.get("engine"))
    regen_dir = member.imaging_products
    regenerated = sorted(p for p in regen_dir.glob("*.fits") if is_sky(p.name))
    if not regenerated:
        raise PermanentError(f"{regen_dir} holds no regenerated image: run alma-regen image first")
    pairs_of = counterparts([p.name for p in regenerated], member.product)
    derived = like_with_like(record, pairs_of, member.product, d / "fidelity_work" / "derived",
                             runner=runner, registry=registry, timeout=timeout)
    images, pairs = [], []
    for p in regenerated:
        images.append({"id": "regen:" + p.name, "path": str(p), "pb": _str(pb_for(p))})
        ref = pairs_of[p.name]
        if ref is not None:
            alt = derived.get(p.name) or {"path": str(ref), "pb": _str(pb_for(ref))}
            images.append({"id": "delivered:" + p.name, "path": alt["path"], "pb": alt["pb"]})
            pairs.append({"id": p.name, "a": "regen:" + p.name, "b": "delivered:" + p.name})
    stats = measure(images, pairs, d / "fidelity_work", member.thumbnails, runner=runner, registry=registry,
                    timeout=timeout, planes=d / "fidelity_work" / "planes")
    results = []
    for p in regenerated:
        regen = stats["images"]["regen:" + p.name]
        entry = {"image": p.name, "regenerated": _public(regen), "counterpart": None}
        ref_path = pairs_of[p.name]
        if ref_path is None:
            entry.update(status="no counterpart", note=f"no delivered image in product/ matches {p.name}")
        else:
            ref = stats["images"]["delivered:" + p.name]
            verdict = judge(p.name, regen, ref, stats["pairs"][p.name], tol)
            entry.update(counterpart=ref_path.name, delivered=_public(ref), checks=verdict["checks"],
                         failures=verdict["failures"], status="fail" if verdict["failures"] else "pass")
            if p.name in derived:
                entry["delivered_as"] = derived[p.name]["note"]
        results.append(entry)
    _previews(results, stats, member.thumbnails, {p.name: pairs_of[p.name] or p for p in regenerated})
    matched = {r["counterpart"] for r in results if r["counterpart"]}
    delivered_all = sorted(p.name for p in member.product.glob("*.fits")
                           if is_sky(p.name)) if member.product.is_dir() else []
    summary = {s: sum(r["status"] == s for r in results) for s in ("pass", "fail", "no counterpart")}
    doc = {"schema": SCHEMA, "member_dir": str(member.root), "tolerances": tol, "summary": summary,
           "ok": summary["fail"] == 0, "images": results,
           "delivered_not_regenerated": sorted(set(delivered_all) - matched)}
    write_atomic(member.fidelity_record, doc, what="the fidelity record")
    log.info("fidelity: %d pass, %d fail, %d without counterpart", summary["pass"], summary["fail"],
             summary["no counterpart"])
    if not doc["ok"] and raise_on_failure:
        bad = [f"{r['image']}: " + "; ".join(r["failures"]) for r in results if r["status"] == "fail"]
        raise FidelityError(f"{summary['fail']} regenerated image(s) do not match the delivered ones: "
                            + " | ".join(bad))
    return doc


def _previews(results: list, stats: dict, out_dir: Path, fits_of: dict) -> None:
    """The summary page's previews; a missing plotting library costs the previews, never the check."""
    try:
        from .previews import render_all
    except ImportError as exc:
        log.warning("no image previews: %s", exc)
        return
    render_all(results, stats, out_dir, fits_of)


def _imaging_record(member: Member) -> dict:
    f = member.imaging_record
    return json.loads(f.read_text()) if f.is_file() else {}


def like_with_like(record: dict, pairs_of: dict, delivered_dir: Path, workdir: Path, *, runner=None,
                   registry=None, timeout=None) -> dict:
    """regenerated name -> {path, pb, note}: the delivered image brought to the quantity the
    imaging pipeline made, where the two differ by design.

    The pipeline's per-spw continuum (mfs) holds only hif_findcont's line-free
    channels and its cubes are continuum-subtracted (hif_uvcontsub); a manually
    imaged delivery's per-spw `cont` holds every channel and its cubes the
    continuum. The pipeline's own continuum ranges (imaging.json, from
    cont.dat) are applied to the delivered cube of the same target and spw
    (include/casa_scripts/image_contsub.py): the cube minus its mean over
    them for the cube; for the continuum, the delivered continuum image less
    the share of the other channels, as the cube measures it. A spw findcont
    found all continuum is compared as delivered."""
    if record.get("engine") != "pipeline":
        return {}
    contsub = set(record.get("continuum_subtracted", []))
    cubes = {(k[0], k[2]): p for p in sorted(delivered_dir.glob("*.fits"))
             if is_sky(p.name) and (k := _key(p.name)) and k[3] == "cube"}
    items, out = [], {}
    for name, ref in pairs_of.items():
        k = _key(name)
        info = _continuum_of(record, k) if ref is not None and k else None
        if not info or not info.get("ranges_ghz"):
            continue
        if k[3] == "cube" and name in contsub:
            dest = workdir / f"{name}.delivered_line"
            items.append({"cube": str(ref), "ranges_ghz": info["ranges_ghz"], "line_out": str(dest), "cont_out": None})
            out[name] = {"path": str(dest), "pb": _str(pb_for(ref)),
                         "note": f"{ref.name} minus its mean over the pipeline's continuum ranges "
                                 f"{info['ranges_ghz']} GHz (the pipeline's cube is continuum-subtracted)"}
        elif _mode(name) == "mfs" and _mode(ref.name) == "cont" and not info.get("allcont") and (k[0], k[2]) in cubes:
            cube = cubes[(k[0], k[2])]
            dest = workdir / f"{name}.delivered_cont"
            items.append({"cube": str(cube), "ranges_ghz": info["ranges_ghz"], "line_out": None,
                          "cont_image": str(ref), "cont_out": str(dest)})
            out[name] = {"path": str(dest), "pb": _str(pb_for(ref)),
                         "note": f"{ref.name} with the share of the channels outside the pipeline's continuum "
                                 f"ranges {info['ranges_ghz']} GHz taken out, as measured in {cube.name} "
                                 f"({ref.name} holds every channel, the pipeline's only the line-free ones)"}
    if not items:
        return {}
    registry = registry or load_registry()
    _, result = CasaJob(workdir, "contsub").run(runner or CasaRunner(log), registry.modular(), "image_contsub.py",
                                               {"items": items}, timeout=timeout, label="delivered continuum ranges")
    done = result["items"]
    problems = {r["cube"]: r["problem"] for r in done if r.get("problem")}
    if problems:
        raise PermanentError("cannot apply the pipeline's continuum ranges to the delivered cubes: "
                             + "; ".join(f"{Path(c).name}: {p}" for c, p in problems.items()))
    # No line in the left-out channels: the delivered continuum is compared as it is.
    unchanged = {str(workdir / f"{n}.delivered_cont") for n in out} - {r.get("cont_out") for r in done}
    return {n: v for n, v in out.items() if v["path"] not in unchanged}


def _continuum_of(record: dict, key) -> dict | None:
    """The pipeline's continuum ranges of (target, spw) from the imaging record (one spw only)."""
    target, spw = key[0], key[2]
    for field, spws in record.get("continuum", {}).items():
        if field.replace(" ", "_") == target and spw in spws:
            return spws[spw]
    return None


def _str(p):
    return str(p) if p else None


def _public(stats: dict) -> dict:
    """What fidelity.json keeps of an image's statistics."""
    keys = ("peak", "peak_pixel", "peak_ra_deg", "peak_dec_deg", "rms", "beam", "unit", "shape",
            "increment_arcsec", "thumbnail", "problem")
    return {k: stats[k] for k in keys if k in stats}
