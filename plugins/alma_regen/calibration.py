"""Turn a delivery plus raw/ into calibrated measurement sets, as scriptForPI does.

Engines (DESIGN.md):
- ``native``: our own restore on modular CASA, one EB at a time (so the DAG can
  map it across workers): include/casa_scripts/restore_eb.py does importasdm ->
  Pipeline_Final flags -> calapply.txt replayed as data -> optional split.
- ``scriptforpi``: the delivery's own scriptForPI.py under a pipeline CASA,
  with SPACESAVING/DOSPLIT/DOCONTSUB set as globals before it runs.
- ``pipeline``: the full calibration from casa_pipescript, the seed's option 2:
  scriptForPI with the restore script set aside (and always put back).
- ``manual``: the per-EB scriptForCalibration.py files under the exact CASA
  version of the reduction.
``auto`` picks by the delivery model and the installed CASAs, and says why.

Output layout, as scriptForPI leaves it:

    calibrated/rawdata/<EB>        -> ../../raw/<EB>.asdm.sdm
    calibrated/products            -> ../calibration
    calibrated/working/<EB>.ms     CORRECTED_DATA holds the calibrated data
    calibrated/working/<EB>.ms.split.cal   science spws, target only (when split)
    calibrated/<EB>.ms.split.cal (or <EB>.ms) -> working/...
    calibrated/calibration.json    the summary (engine, CASA, per-EB timings, flags, outputs)

A native per-EB restore starts from a clean state for that EB (a rerun after a
killed worker needs no re-staging); a calibrated/ that alma-regen did not make
is moved aside, never deleted: it may hold the only copy of someone's work.
"""
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import naming, safexml
from .casa.registry import CasaRegistry, Resolution, load_registry
from .casa.runner import CasaRunner
from .delivery import Delivery
from .errors import CasaError, DeliveryError, NoSpaceError, PermanentError
from .paths import casa_script

log = logging.getLogger(__name__)

ENGINES = ("auto", "native", "scriptforpi", "pipeline", "manual")
MARKER = ".alma-regen"  # in calibrated/: this folder was made by us
SUMMARY = "calibration.json"
# Free disk needed, as a multiple of raw/ (DOMAIN: 11-14 x). Keeping every
# intermediate MS (SPACESAVING 0) needs the most; -1 skips the check.
DISK_FACTOR_BY_SPACESAVING = {0: 14, 1: 13, 2: 12}
DISK_FACTOR_MIN = 11


@dataclass
class Options:
    """The scriptForPI globals and our own knobs (the DAG's params)."""

    engine: str = "auto"
    casa_version: str | None = None   # override; empty: from the README
    dosplit: bool = False
    spacesaving: int = 1
    docontsub: bool = False
    timeout_s: float | None = None

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise PermanentError(f"calibration engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        try:
            self.spacesaving = int(self.spacesaving)
        except (TypeError, ValueError):
            raise PermanentError(f"SPACESAVING must be an integer, not {self.spacesaving!r}") from None


@dataclass
class Plan:
    engine: str
    reason: str
    resolution: Resolution
    ebs: list
    split: bool
    split_reasons: list = field(default_factory=list)

    def as_dict(self):
        return {"engine": self.engine, "reason": self.reason, "casa": self.resolution.as_dict(),
                "ebs": self.ebs, "split": self.split, "split_reasons": self.split_reasons}


# ---------------------------------------------------------------- deciding

def plan(member, options: Options | None = None, registry: CasaRegistry | None = None) -> Plan:
    """Which engine and which CASA, and why (logged and recorded)."""
    options = options or Options()
    registry = registry or load_registry()
    d = Delivery(member)
    kind = d.calibration_kind()["kind"]
    recorded = d.casa_version()["version"] if not options.casa_version else None
    recorded = options.casa_version or recorded
    split = d.split_needed(options.dosplit)
    ebs = d.ppr_ebs()
    engine = options.engine
    if engine == "auto":
        engine, reason = _auto(kind, registry, recorded, options.casa_version)
    else:
        reason = f"engine {engine} requested"
    if engine == "native":
        if kind != "restore":
            raise PermanentError(f"the native engine restores delivered calibration; this delivery has "
                                 f"{kind} calibration (use engine auto, pipeline or manual)")
        res = _modular_for(registry, recorded, options.casa_version)
    elif engine in ("scriptforpi", "pipeline"):
        res = registry.resolve(recorded, needs_pipeline=True, override=options.casa_version)
    else:  # manual
        res = registry.resolve(recorded, manual=True, override=options.casa_version)
    p = Plan(engine, reason, res, ebs, split["needed"], split["reasons"])
    log.info("calibration: engine %s (%s); CASA %s (%s)", engine, reason, res.launcher.describe(), res.reason)
    return p


def _auto(kind, registry, recorded, override):
    if kind == "restore":
        # Our native restore reproduces hifa_restoredata on modular CASA; the
        # delivery's own scriptForPI needs a pipeline CASA of a fitting version.
        return "native", "the delivery has a restore script: native restore on modular CASA"
    if kind == "pipeline":
        return "pipeline", "no restore script: the full calibration pipeline (needs a pipeline CASA)"
    return "manual", "manual calibration scripts: they run under the exact CASA version of the reduction"


def _modular_for(registry, recorded, override) -> Resolution:
    wanted = override or recorded
    if wanted:
        exact = registry.find(wanted)
        if exact is not None and exact.kind == "modular":
            return Resolution(exact, str(wanted), f"modular CASA {exact.version}, the version recorded")
    if override:
        raise CasaError(f"modular CASA {override} (override) is not installed; "
                        f"installed: {registry.describe_installed()}")
    m = registry.modular()
    why = (f"CASA {recorded} is not installed as modular CASA; the native restore replays the delivered "
           f"calibration with modular CASA {m.version}" if recorded else f"modular CASA {m.version}")
    return Resolution(m, str(recorded) if recorded else None, why)


# ---------------------------------------------------------------- disk

def disk_needed(raw_bytes: int, spacesaving: int) -> int | None:
    """Free bytes needed for a calibration of raw_bytes; None when the check is off."""
    if spacesaving < 0:
        return None
    return raw_bytes * DISK_FACTOR_BY_SPACESAVING.get(spacesaving, DISK_FACTOR_MIN)


def preflight_disk(member, spacesaving: int, ebs: list | None = None):
    """Fail before starting CASA when the disk is too small."""
    member = Path(member)
    ebs = ebs if ebs is not None else Delivery(member).ppr_ebs()
    raw = sum(_tree_size(member / "raw" / naming.asdm_dir(e)) for e in ebs)
    need = disk_needed(raw, spacesaving)
    if need is None:
        log.warning("SPACESAVING=-1: disk check skipped")
        return
    free = shutil.disk_usage(member).free
    if free < need:
        raise NoSpaceError(f"{member}: {free / 1e9:.2f} GB free, the calibration needs about "
                           f"{need / 1e9:.2f} GB ({need // max(raw, 1)} x raw/ of {raw / 1e9:.2f} GB, "
                           f"SPACESAVING={spacesaving})")


def _tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


# ---------------------------------------------------------------- layout

def calibrated_dir(member) -> Path:
    return Path(member) / "calibrated"


def set_aside(path: Path) -> Path | None:
    """Move a folder out of the way with a timestamp; never delete it."""
    if not path.exists() and not path.is_symlink():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.previous-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.previous-{stamp}-{n}")
        n += 1
    path.rename(target)
    log.warning("moved the earlier %s aside to %s", path.name, target.name)
    return target


def prepare_layout(member, ebs) -> Path:
    """calibrated/ as scriptForPI builds it; idempotent for our own folder."""
    member = Path(member)
    cal = calibrated_dir(member)
    if cal.exists() and not (cal / MARKER).exists():
        set_aside(cal)
    (cal / "working").mkdir(parents=True, exist_ok=True)
    (cal / "rawdata").mkdir(exist_ok=True)
    (cal / MARKER).write_text("made by alma-regen; safe to rebuild\n")
    for eb in ebs:
        link = cal / "rawdata" / naming.uid_to_file(eb)
        if not link.is_symlink():
            link.symlink_to(Path("..") / ".." / "raw" / naming.asdm_dir(eb))
    products = cal / "products"
    if not products.is_symlink():
        products.symlink_to(Path("..") / "calibration")
    return cal


# ---------------------------------------------------------------- native restore

def pipeline_manifest(member) -> dict:
    """What hifa_restoredata reads: per EB its flag versions and apply file, per
    session the caltables tarball. Falls back to the file naming convention when
    an old delivery has no manifest."""
    member = Path(member)
    cal = member / "calibration"
    found = sorted(cal.glob("*pipeline_manifest.xml"))
    if len(found) > 1:
        raise DeliveryError(cal, f"{len(found)} pipeline manifests: {', '.join(p.name for p in found)}")
    if not found:
        mous = Delivery(member).mous_uid
        tgz = sorted(cal.glob("*caltables.tgz"))
        if len(tgz) != 1:
            raise DeliveryError(cal, "no *pipeline_manifest.xml and not exactly one *caltables.tgz: "
                                     "cannot tell which calibration belongs to which EB")
        log.warning("%s: no pipeline manifest; using the file naming convention", cal)
        return {"mous": mous, "ebs": {}, "default_caltables": tgz[0].name}
    root = safexml.parse_file(found[0])
    ebs = {}
    for session in safexml.find_all(root, "session"):
        caltables = [c.get("name") for c in safexml.children(session, "caltables")]
        for asdm in safexml.children(session, "asdm"):
            name = (asdm.get("name") or "")
            eb = name[:-3] if name.endswith(".ms") else name
            entry = {"session": session.get("name"), "caltables": caltables[0] if caltables else None}
            for child in asdm:
                entry[safexml.local(child.tag)] = child.get("name")
            ebs[eb] = entry
    return {"mous": root.get("name"), "ebs": ebs, "default_caltables": None}


def _cal_file(member: Path, name: str | None, what: str, eb: str) -> Path:
    if not name or "/" in name or name in (".", ".."):
        raise DeliveryError(member / "calibration", f"{eb}: no usable {what} in the pipeline manifest ({name!r})")
    p = member / "calibration" / name
    if not p.is_file():
        raise DeliveryError(p, f"{eb}: the {what} the pipeline manifest names is missing")
    return p


def restore_job(member, eb, split: bool) -> dict:
    member = Path(member)
    f = naming.uid_to_file(eb)
    man = pipeline_manifest(member)
    entry = man["ebs"].get(f, {})
    if man["ebs"] and not entry:
        raise DeliveryError(member / "calibration", f"the pipeline manifest has no <asdm name=\"{f}.ms\">")
    asdm = member / "raw" / naming.asdm_dir(eb)
    if not asdm.is_dir():
        raise DeliveryError(asdm, "missing: stage the raw data first")
    return {
        "eb": f,
        "asdm": str(asdm.resolve()),
        "workdir": str((calibrated_dir(member) / "working").resolve()),
        "calapply": str(_cal_file(member, entry.get("applycmds", f"{f}.ms.calapply.txt"), "apply file", f)),
        "flagversions": str(_cal_file(member, entry.get("finalflags", f"{f}.ms.flagversions.tgz"), "flag versions", f)),
        "caltables": str(_cal_file(member, entry.get("caltables", man["default_caltables"]), "caltables", f)),
        "split": split,
    }


def restore_eb(member, eb, *, split: bool, resolution: Resolution, runner: CasaRunner | None = None,
               timeout_s=None) -> dict:
    """Native restore of one EB (the unit the DAG maps). Returns its record."""
    member = Path(member)
    cal = calibrated_dir(member)
    if not (cal / MARKER).exists():
        raise PermanentError(f"{cal}: not prepared; run the calibration's prepare step first")
    f = naming.uid_to_file(eb)
    job = restore_job(member, eb, split)
    work = cal / "working"
    job_path, result_path = work / f"{f}.restore.job.json", work / f"{f}.restore.result.json"
    result_path.unlink(missing_ok=True)
    job_path.write_text(json.dumps(job, indent=1))
    runner = runner or CasaRunner(log)
    cmd = resolution.launcher.command(casa_script("restore_eb.py"), [job_path.name, result_path.name], shell=False)
    run = runner.run(cmd, cwd=work, timeout=timeout_s, label=f"restore {f}")
    result = json.loads(result_path.read_text())
    check_restored(result, split)
    # scriptForPI leaves calibrated/<EB>.ms (or .ms.split.cal) for the user.
    out = Path(result.get("split") or result["vis"])
    link = cal / out.name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path("working") / out.name)
    record = {
        "eb": eb, "output": str(link), "vis": result["vis"], "split": result.get("split"),
        "split_spws": result.get("split_spws"), "flag_fraction": result["summary"]["flag_fraction"],
        "applycal_calls": result["applycal_calls"], "timings_s": result["timings_s"],
        "duration_s": run.duration_s, "max_rss_mb": run.max_rss_mb, "casa_run": run.as_dict(),
    }
    (work / f"{f}.calibration.json").write_text(json.dumps(record, indent=1))
    log.info("restored %s in %.1f s: %s (flagged %.1f %%)", f, run.duration_s, link.name,
             100 * record["flag_fraction"])
    return record


def check_restored(result: dict, split: bool):
    """Each calibrated MS opens, holds calibrated data for every science spw and target."""
    s = result["summary"]
    if "CORRECTED_DATA" not in s["columns"]:
        raise CasaError(f"{s['vis']}: no CORRECTED_DATA after applycal")
    if not s["target_fields"]:
        raise CasaError(f"{s['vis']}: no OBSERVE_TARGET field")
    if not result.get("science_spws"):
        raise CasaError(f"{s['vis']}: no science spw (OBSERVE_TARGET, more than 4 channels)")
    if split:
        ss = result.get("split_summary") or {}
        if not ss or "DATA" not in ss["columns"]:
            raise CasaError(f"{result.get('split')}: the split MS has no DATA column")
        if len(ss["spws"]) != len(result["science_spws"]):
            raise CasaError(f"{result['split']}: holds {len(ss['spws'])} spws, expected the "
                            f"{len(result['science_spws'])} science spws")
        if sorted(ss["fields"]) != sorted(s["target_fields"]):
            raise CasaError(f"{result['split']}: fields {ss['fields']} are not the targets {s['target_fields']}")


# ---------------------------------------------------------------- the whole MOUS

def calibrate(member, options: Options | None = None, registry: CasaRegistry | None = None,
              runner: CasaRunner | None = None, parallel: int = 1) -> dict:
    """`alma-regen restore`: plan, preflight, every EB, then the finishing steps."""
    options = options or Options()
    member = Path(member)
    p = plan(member, options, registry)
    preflight_disk(member, options.spacesaving, p.ebs)
    t0 = time.monotonic()
    if p.engine in ("scriptforpi", "pipeline"):
        from .scriptforpi import run_script_for_pi
        run = run_script_for_pi(member, p.resolution.launcher, options, force_full=p.engine == "pipeline",
                                runner=runner)
        # scriptForPI ran ImagingPrep and SPACESAVING itself.
        return finish(member, p, options, outputs_of(member, run), time.monotonic() - t0, by_us=False)
    prepare_layout(member, p.ebs)
    if p.engine == "manual":
        records = [run_manual(member, eb, p.resolution, options, runner) for eb in p.ebs]
    elif parallel > 1:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(parallel) as pool:
            futures = [pool.submit(restore_eb, member, eb, split=p.split, resolution=p.resolution,
                                   timeout_s=options.timeout_s) for eb in p.ebs]
            records = [f.result() for f in futures]
    else:
        records = [restore_eb(member, eb, split=p.split, resolution=p.resolution, runner=runner,
                              timeout_s=options.timeout_s) for eb in p.ebs]
    return finish(member, p, options, records, time.monotonic() - t0, runner=runner)


def run_manual(member, eb, resolution: Resolution, options: Options, runner: CasaRunner | None = None) -> dict:
    """One EB's scriptForCalibration.py, in calibrated/<EB>.calibration/ with the
    ASDM linked in under its EB name, as scriptForPI lays out manual data."""
    member = Path(member)
    f = naming.uid_to_file(eb)
    script = next((s for s in Delivery(member).manual_scripts() if s.name.startswith(f)), None)
    if script is None:
        raise DeliveryError(member / "script", f"no {f}.ms.scriptForCalibration.py for EB {eb}")
    where = calibrated_dir(member) / f"{f}.calibration"
    if where.exists():
        shutil.rmtree(where)  # ours, from an earlier attempt: rebuilt from raw/
    where.mkdir()
    (where / f).symlink_to(Path("..") / "rawdata" / f)
    runner = runner or CasaRunner(log)
    run = runner.run(resolution.launcher.command(script.resolve(), shell=True), cwd=where,
                     timeout=options.timeout_s, label=script.name)
    out = where / f"{f}.ms.split.cal"
    if not out.exists():
        raise CasaError(f"{script.name} finished without making {out.name} in {where}")
    link = calibrated_dir(member) / out.name
    if link.is_symlink():
        link.unlink()
    link.symlink_to(Path(where.name) / out.name)
    return {"eb": eb, "output": str(link), "duration_s": run.duration_s, "max_rss_mb": run.max_rss_mb,
            "casa_run": run.as_dict()}


def outputs_of(member, run) -> list:
    """What scriptForPI left in calibrated/, as records."""
    cal = calibrated_dir(member)
    outs = sorted(p for p in cal.glob("*.ms*") if p.name.endswith((".ms", ".ms.split.cal")))
    if not outs:
        raise CasaError(f"scriptForPI finished but {cal} holds no *.ms or *.ms.split.cal")
    return [{"output": str(p), "duration_s": run.duration_s, "casa_run": run.as_dict()} for p in outs]


def finish(member, p: Plan, options: Options, records: list, elapsed_s: float,
           runner: CasaRunner | None = None, by_us: bool = True) -> dict:
    """After every EB: ImagingPrep, SPACESAVING (unless scriptForPI did them), calibration.json."""
    member = Path(member)
    cal = calibrated_dir(member)
    prep = Delivery(member).script("imaging_prep") if by_us else None
    prep_run = None
    if prep is not None:
        runner = runner or CasaRunner(log)
        prep_run = runner.run(p.resolution.launcher.command(prep.resolve(), shell=True), cwd=cal,
                              timeout=options.timeout_s, label=prep.name).as_dict()
    removed = apply_spacesaving(cal / "working", options.spacesaving) if by_us else []
    summary = {
        "schema": "alma-regen/calibration/1",
        "mous_uid": Delivery(member).mous_uid,
        "plan": p.as_dict(),
        "options": {"spacesaving": options.spacesaving, "dosplit": options.dosplit,
                    "docontsub": options.docontsub},
        "ebs": records,
        "imaging_prep": prep_run,
        "spacesaving_removed": removed,
        "elapsed_s": round(elapsed_s, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (cal / SUMMARY).write_text(json.dumps(summary, indent=1))
    log.info("calibration of %s done: %d EBs, %s", summary["mous_uid"], len(records), cal / SUMMARY)
    return summary


def apply_spacesaving(work: Path, level: int) -> list:
    """scriptForPI's SPACESAVING: 1 drops *.ms.split, 2 also the *.ms that have a
    split.cal, 3 and more also *.ms.split.cal. Returns what was removed."""
    removed = []

    def drop(p: Path):
        shutil.rmtree(p)
        flags = p.with_name(p.name + ".flagversions")
        if flags.exists():
            shutil.rmtree(flags)
        removed.append(p.name)

    if level >= 1:
        for p in sorted(work.glob("*.ms.split")):
            drop(p)
    if level >= 2:
        for p in sorted(work.glob("*.ms")):
            if p.with_name(p.name + ".split.cal").exists():
                drop(p)
    if level >= 3:
        for p in sorted(work.glob("*.ms.split.cal")):
            drop(p)
    return removed


def prepare(member, options: Options | None = None, registry: CasaRegistry | None = None) -> Plan:
    """The step before the mapped restores: plan, disk preflight, calibrated/ layout."""
    options = options or Options()
    p = plan(member, options, registry)
    preflight_disk(member, options.spacesaving, p.ebs)
    if p.engine == "native":
        prepare_layout(member, p.ebs)
    return p


def finish_mapped(member, options: Options | None = None, registry: CasaRegistry | None = None,
                  runner: CasaRunner | None = None) -> dict:
    """The step after the mapped restores: gather each EB's record and finish.
    For the engines that cannot be mapped (scriptForPI, pipeline, manual) this
    is where the whole calibration runs."""
    options = options or Options()
    member = Path(member)
    p = plan(member, options, registry)
    if p.engine != "native":
        return calibrate(member, options, registry, runner)
    records, missing = [], []
    for eb in p.ebs:
        rec = calibrated_dir(member) / "working" / f"{naming.uid_to_file(eb)}.calibration.json"
        if rec.is_file():
            records.append(json.loads(rec.read_text()))
        else:
            missing.append(eb)
    if missing:
        raise PermanentError(f"{member}: no restore record for {', '.join(missing)}: their restore did not finish")
    elapsed = max((r.get("duration_s", 0) for r in records), default=0)
    return finish(member, p, options, records, elapsed, runner=runner)


def load_summary(member) -> dict:
    path = calibrated_dir(member) / SUMMARY
    if not path.is_file():
        raise PermanentError(f"{path}: missing: the calibration has not finished")
    return json.loads(path.read_text())


