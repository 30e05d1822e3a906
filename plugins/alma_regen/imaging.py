"""Imaging: regenerate the delivery's images from the calibrated MSs.

Engines:
  pipeline  the imaging pipeline recipe (hifa_image) under a pipeline CASA;
  script    the delivery's scriptForImaging.py, run unattended in calibrated/
            (interactive forced off by a wrapper, input refused);
  native    our own tclean per science target and spw on modular CASA
            (include/casa_scripts/image_native.py): continuum + cube, FITS with
            the ALMA product names. Each (target, spw) is a work unit that can
            run alone (`native_units` + `run_native_unit`, what the DAG maps over)
            or several at once (`image(..., workers=N)`);
  auto      follows the delivery model: pipeline-imaged -> pipeline when a
            pipeline CASA is installed, else native; script-imaged -> script, or
            native on a partial run (an EB missing: the script names every EB's MS).

Inputs: the calibrated MSs at `<member>/calibrated/` level (`*.ms.split.cal`
preferred, else `*.ms`, links followed), as scriptForPI leaves them; the
pipeline engine images the restored `calibrated/working/<EB>.ms` (CORRECTED_DATA).
Outputs, under `<member>/imaging/`:
    products/      the regenerated FITS images (what fidelity and publish use)
    work/<unit>/   CASA images and logs of each native unit
    pipeline/      the imaging pipeline's working folder (its MSs, images, context, cont.dat)
    pipeline_products/  what its hifa_exportdata wrote (FITS, weblog, manifest)
    plan.json      engine, reason, CASA, units       units/<unit>.json  per unit
    imaging.json   the whole record (`imaging_record`)
CASA runs only in child processes (CasaRunner). This module does not import Airflow.
"""
import fnmatch
import json
import logging
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .casa.jobs import CasaJob
from .casa.registry import REGISTRY_ENV, load_registry
from .casa.runner import CasaRunner
from .errors import AlmaRegenError, CasaError, DeliveryError, PermanentError
from .jsonstore import write_atomic
from .member import Member

log = logging.getLogger(__name__)

ENGINES = ("auto", "pipeline", "script", "native")
MODES = ("cont", "cube")
# Clean down to 2.5 x the residual's robust rms (re-measured by tclean each
# major cycle): early on that rms still holds the uncleaned sources'
# sidelobes, and at 3 x a sparse array's images stay sidelobe-limited (on the
# synthetic delivery 3 x left the rms 70 % above the observatory's images,
# 2.5 x matches them).
NSIGMA = 2.5
SCHEMA = "alma-regen/imaging/1"


class ImagingError(PermanentError):
    """Imaging cannot run or produced nothing usable."""


# ------------------------------------------------------------------ inputs

def imaging_dir(member_dir) -> Path:
    """imaging/ of a member folder (a Member or its path): `Member.imaging`."""
    return Member.coerce(member_dir).imaging


def products_dir(member_dir) -> Path:
    """imaging/products/, the regenerated FITS images: `Member.imaging_products`."""
    return Member.coerce(member_dir).imaging_products


def calibrated_ms(member_dir) -> list:
    """The calibrated MSs at calibrated/ level: *.ms.split.cal if any, else *.ms (links followed)."""
    cal = Member.coerce(member_dir).calibrated
    if not cal.is_dir():
        raise ImagingError(f"{cal} does not exist: restore the calibration first (alma-regen restore)")
    split = sorted(p for p in cal.glob("*.ms.split.cal") if p.resolve().is_dir())
    plain = sorted(p for p in cal.glob("*.ms") if p.resolve().is_dir())
    found = split or plain
    if not found:
        raise ImagingError(f"{cal} holds no *.ms.split.cal or *.ms: the calibration did not finish")
    return found


def _unit_file_id(unit_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", unit_id)


# What the imaging steps and the fidelity check write in imaging/ (CASA adds its logs
# where it runs). A rerun removes these; anything else was put there by someone
# else, and the rerun refuses, naming it, rather than delete it (nothing is removed).
_OURS = frozenset({"products", "units", "work", "pipeline", "pipeline_products", "plan.json", "plan.job.json",
                   "plan.result.json", "script.result.json", "pipeline.job.json", "pipeline.result.json",
                   "imaging.json", "fidelity.json", "fidelity_work", "thumbnails"})
_OURS_GLOBS = ("casa-*.log", "ipython-*.log", "*.last", "*.tmp")
_PRODUCT_GLOBS = ("*.fits", "*.fits.tmp")


def _ours(name: str, names=_OURS, globs=_OURS_GLOBS) -> bool:
    return name in names or any(fnmatch.fnmatchcase(name, g) for g in globs)


def _reset(member_dir):
    """A new imaging run starts from nothing: old products must not pass as new ones.

    Only what our steps wrote is removed; a file of anyone else's in imaging/ (or
    anything but FITS in imaging/products/) stops the run with an ImagingError."""
    d = Member.coerce(member_dir).imaging
    if d.is_symlink() or (d.exists() and not d.is_dir()):
        raise ImagingError(f"{d} is not a folder imaging made: move it away and run again (nothing was removed)")
    if d.is_dir():
        entries = list(d.iterdir())
        foreign = [p.name for p in entries if not _ours(p.name)]
        prod = d / "products"
        if prod.is_dir() and not prod.is_symlink():
            foreign += [f"products/{p.name}" for p in prod.iterdir()
                        if not _ours(p.name, (), _PRODUCT_GLOBS) or not p.is_file()]
        if foreign:
            foreign.sort()
            raise ImagingError(f"{d} holds files imaging did not write ({', '.join(foreign[:5])}"
                               f"{f' and {len(foreign) - 5} more' if len(foreign) > 5 else ''}): move them out "
                               "of imaging/ and run again (nothing was removed)")
        for p in entries:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    (d / "products").mkdir(parents=True)


# ------------------------------------------------------------------ engine choice

def choose_engine(member_dir, engine: str = "auto", registry=None) -> dict:
    """{engine, reason}: what will run and why (logged, and recorded in imaging.json)."""
    if engine not in ENGINES:
        raise ImagingError(f"unknown imaging engine {engine!r} (one of {', '.join(ENGINES)})")
    if engine == "pipeline":
        # Said before any work starts (the DAG plans with this), not after a restore.
        _require_pipeline_casa(registry or load_registry())
    if engine != "auto":
        return {"engine": engine, "reason": f"engine {engine} requested"}
    registry = registry or load_registry()
    kind = Member.coerce(member_dir).delivery.imaging_kind()
    if kind["kind"] == "pipeline":
        if any(c.has_pipeline for c in registry.launchers):
            choice = {"engine": "pipeline", "reason": f"{kind['reason']}; a pipeline CASA is installed"}
        else:
            choice = {"engine": "native", "reason": f"{kind['reason']}; no pipeline CASA is installed "
                                                    f"({registry.describe_installed()}): native tclean instead"}
    elif kind["kind"] == "script" and (missing := _missing_ebs(member_dir)):
        # The delivered script's vislist names every EB's MS: on a partial run it would fail on
        # the missing ones; native tclean images the EBs that were calibrated.
        choice = {"engine": "native", "reason": f"{kind['reason']}, but it images every EB and "
                                                f"{', '.join(missing)} is missing (a partial run): native tclean "
                                                "on the EBs calibrated"}
    elif kind["kind"] == "script":
        choice = {"engine": "script", "reason": kind["reason"]}
    else:
        choice = {"engine": "native", "reason": f"{kind['reason']}: native tclean"}
    log.info("imaging engine %s: %s", choice["engine"], choice["reason"])
    return choice


def _missing_ebs(member_dir) -> list:
    """The PPR's EBs without an ASDM in raw/ (a partial run: Delivery.ebs_not_in_raw)."""
    try:
        return Member.coerce(member_dir).delivery.ebs_not_in_raw()
    except DeliveryError:
        return []


def _recorded_casa(member: Member):
    try:
        return member.delivery.casa_version()["version"]
    except DeliveryError:
        return None


# ------------------------------------------------------------------ the entry point

def image(member_dir, engine: str = "auto", *, workers: int = 1, registry=None, runner_factory=CasaRunner,
          timeout: float | None = None, modes=MODES) -> dict:
    """Regenerate the images of a member folder; return (and write) imaging.json.

    workers: native work units run at once (each its own CASA child).
    runner_factory: makes the CasaRunner of each child (the operator keeps
      them to kill on on_kill).
    """
    member = Member.coerce(member_dir)
    registry = registry or load_registry()
    choice = choose_engine(member, engine, registry)
    t0 = time.monotonic()
    if choice["engine"] == "native":
        units = native_units(member, registry=registry, runner=runner_factory(), choice=choice, timeout=timeout)
        with ThreadPoolExecutor(max(1, workers)) as pool:
            futures = [pool.submit(run_native_unit, member, u, registry=registry, runner=runner_factory(),
                                   timeout=timeout, modes=modes) for u in units]
            errors = []
            for f in futures:
                try:
                    f.result()
                except AlmaRegenError as exc:
                    errors.append(exc)
        if errors:
            raise errors[0]
        record = imaging_record(member)
    elif choice["engine"] == "script":
        record = run_script(member, registry=registry, runner=runner_factory(), choice=choice, timeout=timeout)
    else:
        record = run_pipeline(member, registry=registry, runner=runner_factory(), choice=choice, timeout=timeout)
    record["seconds"] = round(time.monotonic() - t0, 3)
    record["workers"] = workers
    write_atomic(member.imaging_record, record, what="the imaging record")
    log.info("imaging (%s) made %d FITS images in %.1f s", record["engine"], len(record["products"]),
             record["seconds"])
    return record


def plan_mapped(member_dir, engine: str = "auto", *, registry=None, runner=None, timeout=None) -> list:
    """Before a mapped imaging (the DAG): the native work units to expand over, or
    none when the engine is `none` or cannot be split (script, pipeline)."""
    if engine == "none":
        log.info("imaging: engine none requested: no images")
        return []
    member = Member.coerce(member_dir)
    choice = choose_engine(member, engine, registry)
    if choice["engine"] != "native":
        return []
    return native_units(member, registry=registry, runner=runner, choice=choice, timeout=timeout)


def finish_mapped(member_dir, engine: str = "auto", *, registry=None, runner_factory=CasaRunner,
                  timeout=None) -> dict | None:
    """After the mapped units: gather them (native), or run an engine that
    cannot be split; None when no imaging was asked for."""
    if engine == "none":
        return None
    member = Member.coerce(member_dir)
    choice = choose_engine(member, engine, registry)
    if choice["engine"] == "native":
        record = imaging_record(member)
        log.info("imaging (native) made %d FITS images", len(record["products"]))
        return record
    return image(member, choice["engine"], registry=registry, runner_factory=runner_factory, timeout=timeout)


def imaging_record(member_dir) -> dict:
    """The record of the last imaging run: plan.json plus every unit's result, and the products."""
    member = Member.coerce(member_dir)
    d = member.imaging
    final = member.imaging_record
    if final.is_file() and not (d / "units").is_dir():
        return json.loads(final.read_text())
    plan_file = d / "plan.json"
    if not plan_file.is_file():
        raise ImagingError(f"{d} holds no imaging run (no plan.json): run alma-regen image first")
    record = json.loads(plan_file.read_text())
    units = {}
    for f in sorted((d / "units").glob("*.json")):
        r = json.loads(f.read_text())
        units[r["unit"]] = r
    missing = [u["id"] for u in record.get("units", []) if u["id"] not in units]
    if missing:
        raise ImagingError(f"imaging is incomplete: work unit(s) {', '.join(missing)} did not finish")
    record["unit_results"] = [units[u["id"]] for u in record.get("units", [])]
    record["products"] = _products(member)
    record["casa_runs"] = [r.get("casa") for r in record["unit_results"]]
    write_atomic(final, record, what="the imaging record")
    return record


def _products(member: Member) -> list:
    return sorted(p.name for p in member.imaging_products.glob("*.fits"))


# ------------------------------------------------------------------ native

def _modular(registry):
    return registry.modular()


def native_units(member_dir, *, registry=None, runner=None, choice=None, timeout=None) -> list:
    """Start a native imaging run: reset imaging/, list the work units (one per target and spw),
    write plan.json. The units are plain JSON: an Airflow mapped task can take one each."""
    member = Member.coerce(member_dir)
    registry = registry or load_registry()
    runner = runner or CasaRunner(log)
    vis = [str(p) for p in calibrated_ms(member)]
    _reset(member)
    d = member.imaging
    launcher = _modular(registry)
    run, plan = CasaJob(d, "plan").run(runner, launcher, "image_native.py", {"vis": vis}, mode="plan",
                                       timeout=timeout, label="native imaging plan")
    if not plan["units"]:
        raise ImagingError(f"no science target with a science spw in {', '.join(vis)}: nothing to image")
    for u in plan["units"]:
        u["file_id"] = _unit_file_id(u["id"])
    choice = choice or {"engine": "native", "reason": "engine native requested"}
    record = {"schema": SCHEMA, "member_dir": str(member.root), "engine": "native", "reason": choice["reason"],
              "casa": launcher.as_dict(), "inputs": vis, "datacolumn": plan["datacolumn"],
              "longest_baseline_m": plan["longest_baseline_m"], "units": plan["units"],
              "plan_casa": run.as_dict()}
    write_atomic(d / "plan.json", record, what="the imaging plan")
    log.info("native imaging: %d work unit(s): %s", len(plan["units"]), ", ".join(u["id"] for u in plan["units"]))
    return plan["units"]


def run_native_unit(member_dir, unit: dict, *, registry=None, runner=None, timeout=None, modes=MODES,
                    niter: int = 1000, nsigma: float = NSIGMA, pbmask: float = 0.2) -> dict:
    """Image one work unit (continuum and cube of one target and spw); write units/<unit>.json."""
    member = Member.coerce(member_dir)
    registry = registry or load_registry()
    runner = runner or CasaRunner(log)
    d = member.imaging
    if not (d / "plan.json").is_file():
        raise ImagingError(f"{d}/plan.json is missing: list the work units first (native_units)")
    fid = unit.get("file_id") or _unit_file_id(unit["id"])
    work = d / "work" / fid
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    job = {"unit": unit, "workdir": str(work), "outdir": str(member.imaging_products),
           "mous_file": member.mous_file or "unknown", "modes": list(modes),
           "niter": niter, "nsigma": nsigma, "pbmask": pbmask}
    run, result = CasaJob(work).run(runner, _modular(registry), "image_native.py", job, mode="unit",
                                    timeout=timeout, label=f"native imaging {unit['id']}")
    result["casa"] = run.as_dict()
    (d / "units").mkdir(exist_ok=True)
    write_atomic(d / "units" / f"{fid}.json", result, what="the result of an imaging unit")
    return result


# ------------------------------------------------------------------ script

def run_script(member_dir, *, registry=None, runner=None, choice=None, timeout=None) -> dict:
    """The delivery's scriptForImaging.py, unattended, in calibrated/ (see image_script_wrapper.py)."""
    member = Member.coerce(member_dir)
    registry = registry or load_registry()
    runner = runner or CasaRunner(log)
    delivery = member.delivery
    script = delivery.script("imaging")
    if script is None:
        raise ImagingError(f"{member.script} holds no scriptForImaging.py: the script engine has nothing to run")
    if delivery.imaging_kind()["kind"] != "script":
        raise ImagingError(f"{script.name} has only comments (the pipeline made the images): "
                           "use the pipeline or native engine")
    cal = member.calibrated
    if not cal.is_dir():
        raise ImagingError(f"{cal} does not exist: restore the calibration first (alma-regen restore)")
    launcher, why = _script_casa(registry, _recorded_casa(member))
    _reset(member)
    job = CasaJob(member.imaging, "script")  # no job file: the wrapper takes the script and its result file
    # The wrapper runs with calibrated/ as its working directory, where the
    # script expects its MSs; the delivery's copy is read where it is.
    run, result = job.run(runner, launcher, "image_script_wrapper.py", None, args=[script.resolve(), job.result_path],
                          cwd=cal, shell=True, timeout=timeout, label=f"{script.name} (unattended)")
    if not result["fits"]:
        raise ImagingError(f"{script.name} ran but made no FITS image (nor a CASA image to export)")
    for f in result["fits"]:
        src = (cal / f).resolve()
        dst = member.imaging_products / src.name
        shutil.copy2(src, dst)
    record = {"schema": SCHEMA, "member_dir": str(member.root), "engine": "script",
              "reason": (choice or {}).get("reason", "engine script requested"), "casa": launcher.as_dict(),
              "casa_choice": why, "script": script.name, "calls": result["calls"], "inputs": [],
              "exported_by_us": result["exported_by_us"], "products": _products(member),
              "casa_runs": [run.as_dict()]}
    try:
        record["inputs"] = [str(p) for p in calibrated_ms(member)]
    except ImagingError:
        pass
    return record


def _script_casa(registry, recorded):
    """The CASA of the reduction when installed; else the newest CASA, said so.

    A manual imaging script is plain CASA task calls, which newer CASAs run;
    the choice is recorded so an operator can see it."""
    try:
        res = registry.resolve(recorded)
        return res.launcher, res.reason
    except CasaError as exc:
        if not registry.launchers:
            raise
        newest = registry.launchers[0]
        why = f"{exc}; running the imaging script under the newest CASA {newest.describe()}"
        log.warning("%s", why)
        return newest, why


# ------------------------------------------------------------------ pipeline

# The imaging part of the ALMA pipeline's hifa_image / hifa_calimage recipes
# (pipeline/recipes/procedure_hifa_image.xml of the 2025.1 release), as
# (task, parameters), on MSs that are already calibrated: hifa_importdata of
# the restored <EB>.ms (CORRECTED_DATA becomes the regcal data) stands for the
# recipe's hifa_restoredata. hif_selfcal and its selfcal image lists (Cycle 11
# on) are left out: a Cycle 10 delivery, as the synthetic one, was imaged
# without them. Image sizes come from the pipeline's own heuristics.
PIPELINE_RECIPE = (
    ("hifa_importdata", {"dbservice": False}),
    ("hif_mstransform", {}),
    ("hifa_flagtargets", {}),
    ("hifa_imageprecheck", {}),
    ("hif_checkproductsize", {"maxcubesize": 40.0, "maxcubelimit": 60.0, "maxproductsize": 500.0}),
    ("hif_makeimlist", {"specmode": "mfs"}),
    ("hif_findcont", {}),
    ("hif_uvcontsub", {}),
    ("hif_makeimages", {}),
    ("hif_makeimlist", {"specmode": "cont"}),
    ("hif_makeimages", {}),
    ("hif_makeimlist", {"specmode": "cube"}),
    ("hif_makeimages", {}),
    ("hif_makeimlist", {"specmode": "repBW"}),
    ("hif_makeimages", {}),
    ("hifa_exportdata", {"imaging_products_only": True}),
)
# The archive names a MOUS's products member.<MOUS>.<pipeline name>; the
# pipeline's exportdata writes them without that prefix.
ARCHIVE_PREFIX = "member."


def _require_pipeline_casa(registry):
    if not any(c.has_pipeline for c in registry.launchers):
        raise CasaError("the imaging pipeline engine needs a CASA with the ALMA pipeline (register a pipeline "
                        "release with `alma-regen casa-versions add-pipeline PATH`, or list one in "
                        f"${REGISTRY_ENV}); installed: {registry.describe_installed()}")


def _pipeline_casa(registry, recorded):
    """The pipeline CASA for the imaging recipe, or a CasaError saying what is needed."""
    _require_pipeline_casa(registry)
    return registry.resolve(recorded, needs_pipeline=True)


def _pipeline_workdir(member: Member, working: Path, vis: list) -> Path:
    """imaging/pipeline/, the recipe's working folder, with the restored MSs linked in.

    Links, not copies: hifa_importdata imports an MS found in its working
    folder in place, and the pipeline writes its own MSs (<EB>_targets.ms,
    _targets_line.ms), images and context next to them, leaving
    calibrated/working/ as the restore left it (but for the data type
    hifa_importdata notes in each MS's HISTORY)."""
    work = member.imaging / "pipeline"
    work.mkdir(parents=True)
    for v in vis:
        os.symlink(working / v, work / v)
    return work


def _judge_pipeline(job: CasaJob, error: CasaError | None, run=None) -> dict:
    """The recipe's own record: every task it ran must have succeeded."""
    if not job.result_path.is_file():
        raise error or ImagingError(f"the imaging pipeline left no result ({job.result_path.name})")
    result = job.result(run or getattr(error, "run", None), "imaging pipeline (hifa_image)")
    failed = result.get("failed")
    if failed:
        raise ImagingError(f"imaging pipeline task {failed['task']} failed: {failed['error'][-600:]}")
    bad = [s for s in result["stages"] if not s["ok"]]
    if bad:
        raise ImagingError("imaging pipeline stage(s) with errors: "
                           + "; ".join(f"{s['stage']} {s['task']}: {' | '.join(s['tracebacks'])}" for s in bad))
    if error is not None:
        raise error
    return result


def run_pipeline(member_dir, *, registry=None, runner=None, choice=None, timeout=None, weblog: bool = False) -> dict:
    """The imaging pipeline (PIPELINE_RECIPE) on the restored MSs of calibrated/working/.

    Needs a pipeline CASA (a CasaError saying so otherwise). The run is judged
    by the pipeline's task results (include/casa_scripts/imaging_pipeline.py),
    not by the tracebacks its QA handlers and weblog print and catch.
    weblog: render the pipeline's weblog (plots: CPU time, and plotms wants a display).
    """
    member = Member.coerce(member_dir)
    registry = registry or load_registry()
    runner = runner or CasaRunner(log)
    res = _pipeline_casa(registry, _recorded_casa(member))
    working = member.working
    # The pipeline images the full calibrated MSs (CORRECTED_DATA), not the splits.
    vis = sorted(p.name for p in working.glob("*.ms") if p.is_dir()) if working.is_dir() else []
    if not vis:
        raise ImagingError(f"{working} holds no calibrated <EB>.ms for the imaging pipeline: restore first")
    mous = member.mous
    if not mous:
        raise ImagingError(f"{member} names no MOUS: the pipeline names its images after it")
    _reset(member)
    d = member.imaging
    work = _pipeline_workdir(member, working, vis)
    exported = d / "pipeline_products"
    recipe = [[task, dict(params, products_dir=str(exported)) if task == "hifa_exportdata" else params]
              for task, params in PIPELINE_RECIPE]
    # The recipe judges itself: its result is read whatever the exit (a failed task exits non-zero).
    job = CasaJob(d, "pipeline")
    job.write({"vis": vis, "mous": mous, "weblog": weblog, "recipe": recipe})
    cmd = job.command(res.launcher, "imaging_pipeline.py", pipeline=True, shell=True)
    run, error = None, None
    try:
        run = runner.run(cmd, cwd=work, timeout=timeout, label="imaging pipeline (hifa_image)", strict=False)
    except CasaError as exc:
        error = exc
    result = _judge_pipeline(job, error, run)
    products = _collect_pipeline_fits(exported, member.imaging_products)
    if not products:
        raise ImagingError(f"the imaging pipeline ran but exported no FITS image into {exported}")
    log.info("imaging pipeline: %d stages in %.0f s, %d FITS", len(result["stages"]),
             sum(s["seconds"] for s in result["steps"]), len(products))
    continuum = read_cont_dat(work / "cont.dat")
    return {"schema": SCHEMA, "member_dir": str(member.root), "engine": "pipeline",
            "reason": (choice or {}).get("reason", "engine pipeline requested"), "casa": res.launcher.as_dict(),
            "casa_choice": res.reason, "pipeline_version": result["pipeline_version"],
            "inputs": [str(working / v) for v in vis], "recipe": result["steps"], "stages": result["stages"],
            "exported": str(exported), "products": _products(member),
            "continuum": continuum, "continuum_subtracted": _contsub_cubes(products, continuum, work, vis),
            "casa_runs": [run.as_dict()]}


_FREQ_RANGE = re.compile(r"^([0-9.]+)~([0-9.]+)GHz\s+(\S+)$")


def read_cont_dat(path: Path) -> dict:
    """hif_findcont's continuum ranges (cont.dat), read as data:
    {field: {spw id: {"ranges_ghz": [[lo, hi], ...], "frame": ..., "allcont": bool}}}.
    A spw whose line holds NONE has no continuum range (nothing is subtracted there)."""
    out, field, spw = {}, None, None
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("Field:"):
            field, spw = line.split(":", 1)[1].strip(), None
            out.setdefault(field, {})
        elif line.startswith("SpectralWindow:") and field is not None:
            spw = line.split()[1]
            out[field][spw] = {"ranges_ghz": [], "frame": None, "allcont": False}
        elif spw is None:
            continue
        elif line.startswith("Flags:"):
            out[field][spw]["allcont"] = "ALLCONT" in line.split()[1:]
        elif line == "ALL":
            out[field][spw]["allcont"] = True
        elif _FREQ_RANGE.match(line):
            lo, hi, frame = _FREQ_RANGE.match(line).groups()
            out[field][spw]["ranges_ghz"].append([float(lo), float(hi)])
            out[field][spw]["frame"] = frame
    return out


def _contsub_cubes(products: list, continuum: dict, work: Path, vis: list) -> list:
    """The cubes the pipeline imaged from continuum-subtracted data: hif_uvcontsub wrote
    <EB>_targets_line.ms, and hif_findcont gave their spw a continuum range to subtract."""
    if not all((work / f"{v[: -len('.ms')]}_targets_line.ms").is_dir() for v in vis):
        return []
    out = []
    for name in products:
        m = re.search(r"\.(?P<target>[^.]+)_sci\.spw(?P<spw>[0-9]+)\.cube\.[a-z]+\.I\.pbcor\.fits$", name)
        target = m and next((f for f in continuum if f.replace(" ", "_") == m["target"]), None)
        if target and continuum[target].get(m["spw"], {}).get("ranges_ghz"):
            out.append(name)
    return out


def _collect_pipeline_fits(exported: Path, dest: Path) -> list:
    """The pipeline's exported FITS into products/, named as the archive delivers them."""
    out = []
    for f in sorted(exported.glob("*.fits")):
        name = f.name if f.name.startswith(ARCHIVE_PREFIX) else ARCHIVE_PREFIX + f.name
        shutil.copy2(f, dest / name)
        out.append(name)
    return out
