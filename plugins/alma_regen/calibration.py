"""Turn a delivery plus raw/ into calibrated measurement sets, as scriptForPI does.

Engines:
- ``native``: our own restore on modular CASA, one EB at a time (so the DAG can
  map it across workers): include/casa_scripts/restore_eb.py does importasdm ->
  Pipeline_Final flags -> calapply.txt replayed as data -> optional split.
- ``scriptforpi``: the delivery's own scriptForPI.py under a pipeline CASA,
  with SPACESAVING/DOSPLIT/DOCONTSUB set as globals before it runs.
- ``pipeline``: the full calibration from casa_pipescript, the seed's option 2:
  scriptForPI with the restore script set aside (and always put back).
- ``manual``: the per-EB scriptForCalibration.py files under the exact CASA
  version of the reduction, as scriptForPI runs them (run_manual: applyonly,
  observing order, ephemerides, the pol/flux/ImagingPrep scripts, SPACESAVING).
``auto`` picks by the delivery model and the installed CASAs, and says why.

Output layout of the native engine, after scriptForPI's:

    calibrated/rawdata/<EB>        -> ../../raw/<EB>.asdm.sdm
    calibrated/products            -> ../calibration
    calibrated/working/<EB>.ms     CORRECTED_DATA holds the calibrated data
    calibrated/working/<EB>.ms.split.cal   science spws, every field, spw ids as scriptForPI's
                                           version keeps them (split_reindex; when split)
    calibrated/<EB>.ms.split.cal (or <EB>.ms) -> working/...
    calibrated/calibration.json    the summary (engine, CASA, per-EB timings, flags, outputs)

The scriptforpi and pipeline engines leave calibrated/ exactly as the
delivery's scriptForPI does (split folders moved up into calibrated/, not
links; see alma_regen.scriptforpi), plus calibration.json.

A native per-EB restore starts from a clean state for that EB (a rerun after a
killed worker needs no re-staging); a calibrated/ that alma-regen did not make
is moved aside, never deleted: it may hold the only copy of someone's work.
"""
import ast
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import naming, safexml
from .casa.registry import CasaRegistry, Resolution, load_registry
from .calibrated import ENGINES, Options, calibrated_dir, set_aside  # noqa: F401  (part of this module's API)
from .casa.jobs import CasaJob
from .casa.runner import CasaRunner
from .asdm import science_spws
from .calapply import parse_calapply, polcal_tables
from .delivery import decided_by, find_pipeline_manifest, followed_version, native_restore_limits, version_text
from .errors import CasaError, DeliveryError, NoSpaceError, PermanentError
from .member import CALIBRATION_PLAN, Member

log = logging.getLogger(__name__)

MARKER = ".alma-regen"  # in calibrated/: this folder was made by us
SUMMARY = "calibration.json"
# The free disk a calibration needs is scriptForPI's own check (alma_regen.delivery.disk_factor,
# through Delivery.disk_rule): one rule for the plan, preflight_disk and the bulk footprint.


@dataclass
class Plan:
    engine: str
    reason: str
    resolution: Resolution
    ebs: list
    split: bool
    split_reasons: list = field(default_factory=list)
    # The native split's spw ids (split_reindex): None when the native engine does not split.
    reindex: bool | None = None
    split_rule: dict | None = None
    # applycal's parang for every EB (polcal_parang): None when the native engine does not restore.
    parang: bool | None = None
    parang_rule: dict | None = None

    def as_dict(self):
        return {"engine": self.engine, "reason": self.reason, "casa": self.resolution.as_dict(),
                "ebs": self.ebs, "split": self.split, "split_reasons": self.split_reasons,
                "reindex": self.reindex, "split_rule": self.split_rule,
                "parang": self.parang, "parang_rule": self.parang_rule}

    @classmethod
    def from_dict(cls, d: dict, registry: CasaRegistry) -> "Plan":
        """The plan as as_dict wrote it, with the very CASA it chose: found installed here (same
        version, kind and executable), or a CasaError, never another CASA in its place."""
        casa = d["casa"]["casa"]
        launcher = next((c for c in registry.launchers if str(c.version) == casa["version"]
                         and c.kind == casa["kind"] and c.executable == casa["executable"]), None)
        if launcher is None:
            raise CasaError(f"the calibration plan chose CASA {casa['version']} ({casa['kind']}: "
                            f"{casa['executable']}), which is not installed on this worker; installed: "
                            f"{registry.describe_installed()}")
        res = Resolution(launcher, d["casa"].get("requested"), d["casa"].get("reason", ""))
        return cls(d["engine"], d["reason"], res, list(d["ebs"]), bool(d["split"]), list(d.get("split_reasons", [])),
                   d.get("reindex"), d.get("split_rule"), d.get("parang"), d.get("parang_rule"))


# The plan of a DAG run, made once by its prepare step and read by every later step (the
# mapped restores, the finish): a README or registry edited in the middle of a run cannot
# put some EBs under another CASA than the one recorded. In the member folder, not in
# calibrated/: scriptForPI refuses to start when calibrated/ exists.
PLAN_FILE = CALIBRATION_PLAN


def save_plan(member, p: Plan, options: Options, run_id: str) -> Path:
    from .jsonstore import write_atomic
    path = Member.coerce(member).calibration_plan
    write_atomic(path, {"run_id": run_id, "options": asdict(options), "plan": p.as_dict()},
                 what="the calibration plan")
    return path


def load_plan(member, options: Options, run_id: str, registry: CasaRegistry | None = None) -> Plan:
    """The plan `save_plan` wrote for this run and these options; a PermanentError when there is
    none (prepare did not run) or it is another run's or other options' (a stale file)."""
    path = Member.coerce(member).calibration_plan
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise PermanentError(f"{path}: no calibration plan: run prepare_calibration of this run first") from None
    except (OSError, ValueError) as exc:
        raise PermanentError(f"{path}: unreadable calibration plan ({exc}): run prepare_calibration again") from None
    wanted = {k: v for k, v in asdict(options).items() if k != "timeout_s"}
    made = {k: v for k, v in (doc.get("options") or {}).items() if k != "timeout_s"}
    if doc.get("run_id") != run_id or made != wanted:
        raise PermanentError(f"{path} is the plan of run {doc.get('run_id')} with {made}, not of run {run_id} "
                             f"with {wanted}: run prepare_calibration of this run again")
    return Plan.from_dict(doc["plan"], registry or load_registry())


# ---------------------------------------------------------------- deciding

def plan(member, options: Options | None = None, registry: CasaRegistry | None = None) -> Plan:
    """Which engine and which CASA, and why (logged and recorded)."""
    options = options or Options()
    registry = registry or load_registry()
    member = Member.coerce(member)
    d = member.delivery
    kind = d.calibration_kind()["kind"]
    recorded = d.casa_version()["version"] if not options.casa_version else None
    recorded = options.casa_version or recorded
    split = d.split_needed(options.dosplit)
    listed = d.ppr_ebs()
    ebs = present_ebs(member, listed)
    missing = [eb for eb in listed if eb not in ebs]
    engine = options.engine
    # What the native restore would get wrong (renormalisation, single dish, selfcal).
    limits = native_restore_limits(member.root) if engine in ("auto", "native") else []
    if engine == "auto":
        engine, reason = _auto(kind, registry, recorded, options.casa_version, limits)
    else:
        reason = f"engine {engine} requested"
    if missing:  # before any CASA is looked for: a partial run the engine cannot do is refused first
        reason += partial_run(engine, missing)
    if engine == "native":
        if kind != "restore":
            raise PermanentError(f"the native engine restores delivered calibration; this delivery has "
                                 f"{kind} calibration (use engine auto, pipeline or manual)")
        if limits:  # never wrong data
            raise PermanentError(f"engine native refused: {'; '.join(limits)} (use engine auto or scriptforpi "
                                 "with a pipeline CASA)")
        res = _modular_for(registry, recorded, options.casa_version)
    elif engine in ("scriptforpi", "pipeline"):
        res = registry.resolve(recorded, needs_pipeline=True, override=options.casa_version)
    else:  # manual
        res = registry.resolve(recorded, manual=True, override=options.casa_version)
    p = Plan(engine, reason, res, ebs, split["needed"], split["reasons"])
    if engine == "native":
        # Decided once for every EB of the MOUS (the per-EB restores cannot see each other).
        p.parang_rule = polcal_parang(member, ebs)
        p.parang = p.parang_rule["parang"]
        if p.split:
            rule = split_reindex(member, ebs)
            p.reindex, p.split_rule = rule["reindex"], rule
            p.split_reasons = p.split_reasons + [rule["why"]]
    log.info("calibration: engine %s (%s); CASA %s (%s)", engine, reason, res.launcher.describe(), res.reason)
    return p


# ---------------------------------------------------------------- parang

def polcal_parang(member, ebs) -> dict:
    """applycal's parang, as hifa_restoredata decides it (hifa/tasks/restoredata/almarestoredata.py,
    PIPE-1973): True for every MS of the restore once any caltable to apply to any of them was made
    by hifa_polcal ('.hifa_polcal.' in its name), else False. The calapply files are read as
    data (and so checked here, before any restore starts). Returns {parang, why, polcal_tables:
    {EB file name: [table names]}}."""
    member = Member.coerce(member)
    man = pipeline_manifest(member)
    found = {}
    for eb in ebs:
        f = naming.uid_to_file(eb)
        entry = man["ebs"].get(f)
        if entry is None:
            continue  # restore_job says so for that EB
        path = _cal_file(member, entry["applycmds"], "apply file", f)
        tables = polcal_tables(parse_calapply(path, member.working, f, entry["session"]))
        if tables:
            found[f] = tables
    if found:
        why = (f"parang=True for every EB: hifa_restoredata applies so once a caltable was made by hifa_polcal "
               f"({'; '.join(f'{eb}: {len(t)} tables' for eb, t in found.items())})")
    else:
        why = "parang=False: no caltable was made by hifa_polcal"
    return {"parang": bool(found), "why": why, "polcal_tables": found}


# ---------------------------------------------------------------- the split's spw ids
# scriptForPI splits each EB's science spws (OBSERVE_TARGET data, more than 4 channels), every
# field, the corrected column, into <EB>.ms.split.cal. Read in real copies (the code search):
#   v1.15 (2015)         split(vis, outputvis, spw=<science>): split renumbers the spws from 0;
#   v1.23 (2017), v1.34  mstransform(..., spw=<science>, reindex=False): the original ids, which
#                        scriptForImaging.py files of those cycles select (spw='25,27,29,31');
#   v2.5 (2023)          mstransform(..., reindex=<the science spw ids differ between the EBs>),
#                        the ids compared over the EBs it splits.
# A version between two read ones follows the newer read one, and a delivery without a readable
# scriptForPI the newest (v2.5): alma_regen.delivery's convention (followed_version).
SPLIT_KEEPS_IDS_SINCE = (1, 16)
SPLIT_REINDEX_IF_DIFFERENT_SINCE = (1, 35)


def split_reindex(member, ebs) -> dict:
    """Whether the native split renumbers the spw ids (mstransform's `reindex`), decided once for
    all EBs of the MOUS by the rule of the delivery's scriptForPI version. For v2.5's rule the
    science spws of every EB are read from its ASDM (alma_regen.asdm.science_spws); each restore
    checks them against the imported MS. Returns {reindex, rule, why, decided_by,
    scriptforpi_version, science_spws: {EB file name: [ids]}}."""
    member = Member.coerce(member)
    v = member.delivery.scriptforpi_version()
    followed = followed_version(v)
    out = {"scriptforpi_version": version_text(v) if v else None, "decided_by": decided_by(v), "science_spws": {}}
    if followed < SPLIT_KEEPS_IDS_SINCE:
        return {**out, "reindex": True, "rule": "always",
                "why": f"spw ids renumbered from 0: {out['decided_by']} splits with split(), which always "
                       "reindexes"}
    if followed < SPLIT_REINDEX_IF_DIFFERENT_SINCE:
        return {**out, "reindex": False, "rule": "never",
                "why": f"original spw ids kept: {out['decided_by']} splits with mstransform(reindex=False)"}
    spws = {}
    for eb in ebs:
        asdm = member.asdm(eb)
        if not asdm.is_dir():
            raise DeliveryError(asdm, "missing: the split's spw ids (v2.5 renumbers them when the EBs' science spws "
                                      "differ) need every EB's ASDM: stage the raw data first")
        spws[naming.uid_to_file(eb)] = science_spws(_confined(member.root, asdm))
    out["science_spws"] = spws
    shown = "; ".join(f"{eb}: {','.join(map(str, s)) or 'none'}" for eb, s in spws.items())
    if len({tuple(s) for s in spws.values()}) > 1:
        return {**out, "reindex": True, "rule": "if-different",
                "why": f"spw ids renumbered from 0: the EBs' science spws differ ({shown}), and "
                       f"{out['decided_by']} then reindexes"}
    return {**out, "reindex": False, "rule": "if-different",
            "why": f"original spw ids kept: every EB has the same science spws ({shown}), and "
                   f"{out['decided_by']} then keeps them (reindex=False)"}


def present_ebs(member, ebs: list) -> list:
    """The PPR's EBs whose ASDM is in raw/: the ones calibrated. One the archive lacks is left
    out with a warning, as scriptForPI v2.5 does ("absent from directory raw ... Will try to
    proceed with the rest"), and the run is partial (the published manifest says which);
    none present is its "Nothing to process". Staging and the plan's check make a missing EB
    an error when all are required (require_all_ebs)."""
    member = Member.coerce(member)
    missing = member.delivery.ebs_not_in_raw(ebs)
    if missing and len(missing) == len(ebs):
        raise DeliveryError(member.raw, f"none of the PPR's EBs is in raw/ ({', '.join(missing)}): nothing to process")
    for eb in missing:
        log.warning("calibration: %s of the PPR is not in raw/: calibrating the other EBs (the run is partial)", eb)
    return [eb for eb in ebs if eb not in missing]


def partial_run(engine: str, missing: list) -> str:
    """What an engine does when PPR EBs are not in raw/ (a partial run), as the real software does
    it: a note for the plan's reason, or a PermanentError before any CASA starts. Seen with the real
    pipeline (2025.1.1.61) under a scriptForPI that, as v2.5, drops the missing EBs from its own
    lists and runs the delivery's scripts unchanged (tests/test_missing_ebs.py):
    - scriptforpi (the restore script lists every EB): hifa_restoredata logs an error for each
      missing EB ("Error processing <EB>") and restores the others, right;
    - pipeline (the calibration pipescript imports every EB): hifa_importdata fails on the first
      missing one and nothing is calibrated: refused here, in one line;
    - native and manual: the EBs present, one by one, as scriptForPI's own loop."""
    names = ", ".join(missing)
    if engine == "pipeline":
        raise PermanentError(f"engine pipeline refused for a partial run: {names} of the PPR "
                             f"{'is' if len(missing) == 1 else 'are'} not in raw/, and the calibration pipescript "
                             "imports every EB it lists (hifa_importdata stops on a missing one): stage every EB, "
                             "or restore the EBs present with engine native or scriptforpi")
    if engine == "scriptforpi":
        return (f"; a partial run ({names} not in raw/): hifa_restoredata reports an error for "
                f"{'it' if len(missing) == 1 else 'them'} and restores the other EBs")
    return f"; a partial run ({names} not in raw/): the other EBs are calibrated"


def _auto(kind, registry, recorded, override, limits=()):
    if limits and kind in ("restore", "pipeline"):
        # What native cannot restore right goes to the pipeline, or stops here.
        why = "; ".join(limits)
        if not any(c.has_pipeline for c in registry.launchers):
            raise CasaError(f"{why}. This needs a pipeline CASA, and none is installed: register one with "
                            "`alma-regen casa-versions add-pipeline RELEASE`")
        if kind == "restore":
            return "scriptforpi", f"{why}: the delivery's scriptForPI under a pipeline CASA"
        return "pipeline", f"{why}: the full calibration pipeline"
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

def preflight_disk(member, spacesaving: int):
    """Fail before starting CASA when the disk is too small, by scriptForPI's own check as the
    plan states it (Delivery.disk over Delivery.raw_bytes: (11 + 3f) x raw/, 7 + 3f for
    SPACESAVING=1, 3 + 3f for >= 2, none for -1)."""
    d = Member.coerce(member).delivery
    disk = d.disk(d.raw_bytes(), spacesaving=spacesaving)
    rule = disk["rule"]
    if disk["needed_bytes"] is None:
        log.warning("SPACESAVING=-1: disk check skipped (%s)", rule["decided_by"])
        return
    if not disk["enough"]:
        raise NoSpaceError(f"{member}: {disk['free_bytes'] / 1e9:.2f} GB free, the calibration needs about "
                           f"{disk['needed_bytes'] / 1e9:.2f} GB ({rule['formula']} of "
                           f"{disk['raw_bytes'] / 1e9:.2f} GB; {rule['decided_by']}; SPACESAVING=-1 skips the check)")


# ---------------------------------------------------------------- layout

def prepare_layout(member, ebs) -> Path:
    """calibrated/ as scriptForPI builds it; idempotent for our own folder."""
    cal = Member.coerce(member).calibrated
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
    """What hifa_restoredata reads, per EB (file form): its session, caltables
    tarball, flag versions and apply file; plus the recorded versions. From the
    pipeline manifest; without one (Cycle 4 and older), from the restore script's
    `session=[...]` list and the pipeline's file naming."""
    member = Member.coerce(member)
    found = find_pipeline_manifest(member.root)
    if found is None:
        return _manifest_from_restore_script(member)
    ous = safexml.parse_file(_confined(member.root, found))
    ebs = {}
    caltables = {s.get("name"): _first_name(s, "caltables") for s in safexml.find_all(ous, "session")}
    for session in safexml.find_all(ous, "session"):
        name = session.get("name")
        for asdm in safexml.children(session, "asdm"):
            entry = {"session": name, "caltables": caltables[name] or caltables.get("default"),
                     "finalflags": _first_name(asdm, "finalflags"), "applycmds": _first_name(asdm, "applycmds")}
            ebs[_ms_stem(asdm.get("name") or "")] = entry
    if not ebs:
        raise DeliveryError(found, "lists no <session><asdm>: cannot tell which calibration belongs to which EB")
    return {"source": str(found), "ebs": ebs, "casa_version": _first_name(ous, "casaversion"),
            "pipeline_version": _first_name(ous, "pipeline_version")}


def _first_name(el, tag) -> str | None:
    found = safexml.find_all(el, tag)
    return found[0].get("name") if found else None


def _ms_stem(name: str) -> str:
    return name[:-3] if name.endswith(".ms") else name


def restore_script_sessions(member) -> dict:
    """EB (file form) -> session, from the restore script's hifa_restoredata call,
    read as data (ast), never run. EBs beyond the session list go to the last
    session, as hifa_restoredata assigns them."""
    member = Member.coerce(member)
    script = member.delivery.script("restore")
    if script is None:
        raise DeliveryError(member.script, "no pipeline manifest and no *casa_piperestorescript.py: "
                                           "cannot tell which session's caltables belong to which EB")
    try:
        tree = ast.parse(_confined(member.root, script).read_bytes(), filename=str(script))
    except (SyntaxError, ValueError) as exc:
        raise DeliveryError(script, f"cannot be read as Python: {exc}") from None
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
             and n.func.id in ("hifa_restoredata", "h_restoredata")]
    if len(calls) != 1:
        raise DeliveryError(script, f"has {len(calls)} hifa_restoredata calls; expected exactly one")
    args = {}
    for kw in calls[0].keywords:
        if kw.arg in ("vis", "session"):
            try:
                args[kw.arg] = ast.literal_eval(kw.value)
            except ValueError:
                raise DeliveryError(script, f"hifa_restoredata {kw.arg}= is not a literal") from None
    vis, sessions = args.get("vis"), args.get("session") or ["session_1"]
    vis = [vis] if isinstance(vis, str) else vis
    sessions = [sessions] if isinstance(sessions, str) else sessions
    if not vis or not all(isinstance(v, str) for v in vis) or not all(isinstance(x, str) for x in sessions):
        raise DeliveryError(script, "hifa_restoredata needs vis=[...] and session=[...] lists of names")
    return {_ms_stem(v.rstrip("/").rsplit("/", 1)[-1]): sessions[min(i, len(sessions) - 1)]
            for i, v in enumerate(vis)}


def _manifest_from_restore_script(member: Member) -> dict:
    cal = member.calibration
    ebs = {}
    names = sorted(p.name for p in cal.iterdir() if p.is_file()) if cal.is_dir() else []
    for eb, session in restore_script_sessions(member).items():
        if not session or "/" in session or session in (".", ".."):
            raise DeliveryError(member.script, f"the restore script names the session {session!r}")
        # hifa_restoredata without a manifest, started by a restore script (its OUS id then
        # unknown; h/tasks/restoredata/restoredata.py): the first, in name order, of
        # *<session>.caltables.tgz; the flags and apply file by the EB's MS name.
        tgz = [n for n in names if n.endswith(f"{session}.caltables.tgz")]
        if len(tgz) > 1:
            log.warning("%s: %d caltables tarballs for %s (%s): the first is taken, as hifa_restoredata does",
                        cal, len(tgz), session, ", ".join(tgz))
        ebs[eb] = {"session": session, "caltables": tgz[0] if tgz else f"*{session}.caltables.tgz",
                   "finalflags": f"{eb}.ms.flagversions.tgz", "applycmds": f"{eb}.ms.calapply.txt"}
    log.warning("%s: no pipeline manifest; sessions from the restore script, files by the pipeline's naming", cal)
    return {"source": None, "ebs": ebs, "casa_version": None, "pipeline_version": None}


def _confined(member: Path, path: Path) -> Path:
    """The real path of a file the native restore reads: links followed, it must stay in
    the member folder (a symlink of the delivery must not make the restore read a host
    file). Checked right before the read; the path handed on is the real one."""
    real, top = path.resolve(), member.resolve()
    if real != top and top not in real.parents:
        raise DeliveryError(path, f"resolves to {real}, outside the member folder {top}: refused")
    return real


def _cal_file(member: Member, name: str | None, what: str, eb: str) -> Path:
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise DeliveryError(member.calibration, f"{eb}: no usable {what} named ({name!r})")
    p = member.calibration / name
    if not p.is_file():
        raise DeliveryError(p, f"{eb}: the {what} is missing")
    return _confined(member.root, p)


def restore_job(member, eb, split: bool, split_rule: dict | None = None, parang: bool = False) -> dict:
    """The job file of restore_eb.py for one EB. `split_rule` is the plan's (split_reindex): its
    `reindex`, and this EB's science spws as read from the ASDM when the rule needed them
    (`science_spws`: the restore refuses an MS that has others, since the reindex was decided
    on them). `parang` is the plan's polcal_parang decision."""
    member = Member.coerce(member)
    f = naming.uid_to_file(eb)
    man = pipeline_manifest(member)
    entry = man["ebs"].get(f)
    if entry is None:
        where = man["source"] or "the restore script"
        raise DeliveryError(member.calibration, f"{where} does not list {f}: its calibration is unknown")
    asdm = member.asdm(eb)
    if not asdm.is_dir():
        raise DeliveryError(asdm, "missing: stage the raw data first")
    return {
        "eb": f,
        "session": entry["session"],
        "asdm": str(asdm.resolve()),
        "workdir": str(member.working.resolve()),
        "calapply": str(_cal_file(member, entry["applycmds"], "apply file", f)),
        "flagversions": str(_cal_file(member, entry["finalflags"], "flag versions", f)),
        "caltables": str(_cal_file(member, entry["caltables"], f"caltables of {entry['session']}", f)),
        "parang": bool(parang),
        "split": split,
        "reindex": bool((split_rule or {}).get("reindex")),
        "science_spws": (split_rule or {}).get("science_spws", {}).get(f) if split else None,
    }


def restore_eb(member, eb, *, split: bool, resolution: Resolution, runner: CasaRunner | None = None,
               timeout_s=None, split_rule: dict | None = None, parang: bool | None = None) -> dict:
    """Native restore of one EB (the unit the DAG maps). Returns its record. `split_rule`: the
    plan's split_reindex decision, `parang` its polcal_parang one (the same for every EB of the MOUS)."""
    member = Member.coerce(member)
    cal = member.calibrated
    if not (cal / MARKER).exists():
        raise PermanentError(f"{cal}: not prepared; run the calibration's prepare step first")
    f = naming.uid_to_file(eb)
    if parang is None:  # not from a plan: decided here, as the plan decides it, over the whole MOUS
        parang = polcal_parang(member, member.delivery.ppr_ebs())["parang"]
    job = restore_job(member, eb, split, split_rule, parang)
    work = member.working
    run, result = CasaJob(work, f"{f}.restore").run(
        runner or CasaRunner(log), resolution.launcher, "restore_eb.py", job, relative=True, timeout=timeout_s,
        label=f"restore {f}")
    check_restored(result, split, job["reindex"])
    # scriptForPI leaves calibrated/<EB>.ms (or .ms.split.cal) for the user.
    out = Path(result.get("split") or result["vis"])
    link = cal / out.name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path("working") / out.name)
    record = {
        "eb": eb, "output": str(link), "vis": result["vis"], "split": result.get("split"),
        "split_spws": result.get("split_spws"), "reindex": result.get("reindex"), "parang": job["parang"],
        "science_spws": result.get("science_spws"), "flag_fraction": result["summary"]["flag_fraction"],
        "applycal_calls": result["applycal_calls"], "timings_s": result["timings_s"],
        "duration_s": run.duration_s, "max_rss_mb": run.max_rss_mb, "casa_run": run.as_dict(),
    }
    (work / f"{f}.calibration.json").write_text(json.dumps(record, indent=1))
    log.info("restored %s in %.1f s: %s (flagged %.1f %%)", f, run.duration_s, link.name,
             100 * record["flag_fraction"])
    return record


def check_restored(result: dict, split: bool, reindex: bool = False):
    """Each calibrated MS opens, holds calibrated data for every science spw and target; a split
    is scriptForPI's: every field of the MS, the science spws under their own ids (every
    SPECTRAL_WINDOW row kept) or, reindexed, under 0..n-1, and the ASDM_* subtables."""
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
        science = sorted(result["science_spws"])
        want = list(range(len(science))) if reindex else science
        have = sorted(int(k) for k in ss["spws"])
        if have != want:
            raise CasaError(f"{result['split']}: holds data of spws {have}, expected {want} (the science spws "
                            f"{science}, {'renumbered from 0' if reindex else 'under their own ids'})")
        rows = result.get("split_spw_rows")
        if not reindex and rows is not None and rows != result.get("spw_rows"):
            raise CasaError(f"{result['split']}: {rows} SPECTRAL_WINDOW rows, the MS has {result.get('spw_rows')}: "
                            "a split that keeps the spw ids keeps every row")
        if sorted(ss["fields"]) != sorted(s["fields"]):
            raise CasaError(f"{result['split']}: fields {ss['fields']}, the MS has {s['fields']}: "
                            "scriptForPI's split keeps every field")
        lost = sorted(set(result.get("asdm_subtables") or ()) - set(result.get("split_asdm_subtables") or ()))
        if lost:
            raise CasaError(f"{result['split']}: lost the subtables {', '.join(lost)} of the MS")


# ---------------------------------------------------------------- the whole MOUS

def calibrate(member, options: Options | None = None, registry: CasaRegistry | None = None,
              runner: CasaRunner | None = None, parallel: int = 1, p: Plan | None = None) -> dict:
    """`alma-regen restore`: plan (unless given), preflight, every EB, then the finishing steps."""
    options = options or Options()
    member = Member.coerce(member)
    p = p or plan(member, options, registry)
    preflight_disk(member, options.spacesaving)
    t0 = time.monotonic()
    if p.engine in ("scriptforpi", "pipeline"):
        from .scriptforpi import run_script_for_pi
        run, report = run_script_for_pi(member, p.resolution.launcher, options,
                                        force_full=p.engine == "pipeline", runner=runner)
        # scriptForPI ran ImagingPrep and SPACESAVING itself.
        return finish(member, p, options, outputs_of(member, p.ebs, run, report), time.monotonic() - t0,
                      by_us=False)
    if p.engine == "manual":
        # scriptForPI's manual branch, whole: it runs ImagingPrep and SPACESAVING itself.
        records, steps = run_manual(member, p, options, runner)
        return finish(member, p, options, records, time.monotonic() - t0, by_us=False,
                      extra={"manual_scripts": steps})
    prepare_layout(member, p.ebs)
    if parallel > 1:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(parallel) as pool:
            futures = [pool.submit(restore_eb, member, eb, split=p.split, resolution=p.resolution,
                                   timeout_s=options.timeout_s, split_rule=p.split_rule, parang=p.parang) for eb in p.ebs]
            records = [f.result() for f in futures]
    else:
        records = [restore_eb(member, eb, split=p.split, resolution=p.resolution, runner=runner,
                              timeout_s=options.timeout_s, split_rule=p.split_rule, parang=p.parang) for eb in p.ebs]
    return finish(member, p, options, records, time.monotonic() - t0, runner=runner)


# ---------------------------------------------------------------- manual calibration, as scriptForPI runs it
MANUAL_JOB = "manual_calibration"   # calibrated/manual_calibration.{job,result}.json


def prepare_manual(member, ebs: list, spacesaving: int) -> dict:
    """calibrated/ for manual data as scriptForPI lays it out, and the job for
    include/casa_scripts/run_manual_calibration.py. Per EB (in scriptForPI's order:
    Delivery.manual_runs): calibrated/<EB>.calibration/ holding `<EB>` -> ../../raw/<EB>.asdm.sdm
    and a link to each calibration/*.eph; then scriptForPolCalibration.py,
    scriptForFluxCalibration.py and scriptForImagingPrep.py, run in calibrated/.
    `ebs`: the EBs to calibrate (those in raw/). SPACESAVING as scriptForPI applies it
    (limited to 1 for a renormalising flux script: Delivery.disk_rule)."""
    member = Member.coerce(member)
    d = member.delivery
    cal = member.calibrated
    if cal.exists() and not (cal / MARKER).exists():
        set_aside(cal)
    cal.mkdir(exist_ok=True)
    (cal / MARKER).write_text("made by alma-regen; safe to rebuild\n")
    wanted = {naming.uid_to_file(e) for e in ebs}
    ephemerides = sorted(p.name for p in member.calibration.glob("*.eph")) if member.calibration.is_dir() else []
    steps = []
    for run in d.manual_runs():
        f = naming.uid_to_file(run["eb"])
        if f not in wanted:
            continue
        where = cal / f"{f}.calibration"
        if where.exists() or where.is_symlink():
            shutil.rmtree(where)  # ours (calibrated/ carries our marker), from an earlier attempt
        where.mkdir()
        (where / f).symlink_to(Path("..") / ".." / "raw" / naming.asdm_dir(f))
        for eph in ephemerides:
            (where / eph).symlink_to(Path("..") / ".." / "calibration" / eph)
        script = _confined(member.root, member.script / run["script"])
        steps.append({"kind": "eb", "eb": f, "single_dish": run["kind"] == "single-dish", "script": run["script"],
                      "path": str(script), "cwd": where.name})
    for role, kind in (("pol_calibration", "pol"), ("flux_calibration", "flux"), ("imaging_prep", "imaging_prep")):
        script = d.script(role)  # two of a kind: scriptForPI's "non-unique" stop, here a DeliveryError
        if script is not None:
            steps.append({"kind": kind, "script": script.name, "path": str(_confined(member.root, script)),
                          "cwd": "."})
    rule = d.disk_rule(spacesaving)
    return {"steps": steps, "ebs": [s["eb"] for s in steps if s["kind"] == "eb"], "ephemerides": ephemerides,
            "spacesaving": rule["effective_spacesaving"], "spacesaving_rule": rule}


def run_manual(member, p: Plan, options: Options, runner: CasaRunner | None = None) -> tuple:
    """The manual calibration of the whole MOUS in one CASA session, as scriptForPI runs it
    (`applyonly = True` first; the EB scripts in order, each in its folder, SPACESAVING after
    each; then the pol, flux and ImagingPrep scripts): include/casa_scripts/run_manual_calibration.py
    under the exact CASA of the reduction, in the sandbox like all delivery code. Returns
    (one record per EB, every script's step as the wrapper reports it)."""
    member = Member.coerce(member)
    job = prepare_manual(member, p.ebs, options.spacesaving)
    if not job["ebs"]:
        raise DeliveryError(member.script, "no calibration script for the EBs in raw/ "
                                           f"({', '.join(p.ebs) or 'none'}): nothing to calibrate")
    cj = CasaJob(member.calibrated, MANUAL_JOB)
    runner = runner or CasaRunner(log)
    label = f"manual calibration ({len(job['ebs'])} EBs)"
    try:
        # The delivery's scripts print what they print: judged by the wrapper's result.
        run, result = cj.run(runner, p.resolution.launcher, "run_manual_calibration.py", job, relative=True,
                             shell=True, strict=False, timeout=options.timeout_s, label=label)
    except CasaError as exc:
        stopped = _manual_stopped(cj)
        if stopped is None:
            raise
        raise CasaError(f"{stopped['script']} (in calibrated/{stopped['cwd']}) stopped the manual calibration: "
                        f"{stopped['error']}") from exc
    missing = [s for s in result["steps"] if s["kind"] == "eb" and not s["made"]]
    if missing:
        raise CasaError("; ".join(f"{s['script']} finished without making {s['eb']}.ms.split.cal"
                                  for s in missing) + " (scriptForPI goes on with the other EBs; their "
                                  f"outputs are in {member.calibrated})")
    records = []
    for s in (s for s in result["steps"] if s["kind"] == "eb"):
        out = member.calibrated / s["made"]
        if s["made"] in result["removed_at_end"]:
            out = member.calibrated / "calibrated.ms"  # SPACESAVING >= 3 kept only the concatenation
        if not (out / "table.dat").is_file():
            raise CasaError(f"{out}: not a measurement set")
        records.append({"eb": naming.file_to_uid(s["eb"]), "output": str(out), "script": s["script"],
                        "single_dish": next(j["single_dish"] for j in job["steps"] if j.get("eb") == s["eb"]),
                        "removed": s["removed"], "seconds": s["seconds"], "duration_s": run.duration_s,
                        "max_rss_mb": run.max_rss_mb, "casa_run": _run_record(run)})
    steps = [{k: s[k] for k in ("kind", "script", "eb", "cwd", "applyonly", "seconds", "made", "removed")}
             for s in result["steps"]]
    steps.append({"kind": "spacesaving", "level": result["spacesaving"], "removed": result["removed_at_end"]})
    return records, steps


def _manual_stopped(cj: CasaJob) -> dict | None:
    try:
        return json.loads(cj.result_path.read_text()).get("stopped")
    except (OSError, ValueError):
        return None


def outputs_of(member, ebs, run, report: dict) -> list:
    """Each EB's calibrated MS where scriptForPI leaves it, checked, as records:
    calibrated/<EB>.ms.split.cal (a folder moved up from working/, when split) or
    calibrated/<EB>.ms (a link into working/). `report` is what the wrapper saw
    in calibrated/ (include/casa_scripts/run_script_for_pi.py)."""
    cal = Member.coerce(member).calibrated
    seen = report.get("calibrated") or {}
    entries, working = seen.get("entries", {}), seen.get("working_ms", {})
    if not any(n.endswith((".ms", ".ms.split.cal")) for n in entries):
        # A scriptForPI that finds no PPR (or stops early) still ends "Done" with exit 0.
        raise CasaError(f"scriptForPI exited {run.returncode} but {cal} holds no <EB>.ms.split.cal nor <EB>.ms "
                        f"(it holds: {', '.join(entries) or 'nothing'}): nothing was calibrated")
    records = []
    for eb in ebs:
        f = naming.uid_to_file(eb)
        name, ms = _output_entry(cal, entries, f)
        vis = working.get(f"{f}.ms")
        if vis is not None and "CORRECTED_DATA" not in vis.get("columns", ()):
            raise CasaError(f"{cal / 'working' / (f + '.ms')}: no CORRECTED_DATA: the calibration applied nothing")
        records.append({"eb": eb, "output": str(cal / name), "split": name.endswith(".split.cal"),
                        "linked_to": entries[name]["link"], "split_spws": ms["data_spws"],
                        "spw_rows": ms["spw_rows"], "fields": ms["fields"], "rows": ms["rows"],
                        "vis": str(cal / "working" / f"{f}.ms") if vis is not None else None,
                        "pipeline_tasks": report["tasks"],
                        "duration_s": run.duration_s, "max_rss_mb": run.max_rss_mb, "casa_run": _run_record(run)})
    return records


def _run_record(run) -> dict:
    """The CASA run for calibration.json. A pipeline run's weblog prints thousands of
    traceback and SEVERE lines that are not its verdict: their count and tail are kept."""
    rec = run.as_dict()
    for key in ("traceback", "severe"):
        rec[f"{key}_lines"] = len(rec[key])
        rec[key] = rec[key][-20:]
    return rec


def _output_entry(cal: Path, entries: dict, f: str):
    """The calibrated MS of EB file name `f` in calibrated/ and what it holds."""
    for name, column in ((f"{f}.ms.split.cal", "DATA"), (f"{f}.ms", "CORRECTED_DATA")):
        entry = entries.get(name)
        if entry is None:
            continue
        ms = entry.get("ms") or {"error": "not a measurement set (a dangling link?)"}
        if "error" in ms:
            raise CasaError(f"{cal / name}: cannot be read: {ms['error']}")
        if column not in ms["columns"] or not ms["rows"]:
            raise CasaError(f"{cal / name}: no {column} rows: not a calibrated measurement set")
        return name, ms
    raise CasaError(f"{cal}: no {f}.ms.split.cal nor {f}.ms: EB {f} was not calibrated")


def finish(member, p: Plan, options: Options, records: list, elapsed_s: float,
           runner: CasaRunner | None = None, by_us: bool = True, extra: dict | None = None) -> dict:
    """After every EB: ImagingPrep, SPACESAVING (unless scriptForPI did them), calibration.json."""
    member = Member.coerce(member)
    cal = member.calibrated
    prep = member.delivery.script("imaging_prep") if by_us else None
    prep_run = None
    if prep is not None:
        runner = runner or CasaRunner(log)
        prep_run = runner.run(p.resolution.launcher.command(prep.resolve(), shell=True), cwd=cal,
                              timeout=options.timeout_s, label=prep.name).as_dict()
    removed = apply_spacesaving(cal / "working", options.spacesaving) if by_us else []
    summary = {
        "schema": "alma-regen/calibration/1",
        "mous_uid": member.mous,
        "plan": p.as_dict(),
        "options": {"spacesaving": options.spacesaving, "dosplit": options.dosplit,
                    "docontsub": options.docontsub},
        "ebs": records,
        "imaging_prep": prep_run,
        "spacesaving_removed": removed,
        "elapsed_s": round(elapsed_s, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
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


def prepare(member, options: Options, run_id: str, registry: CasaRegistry | None = None) -> Plan:
    """The step before the mapped restores: plan, disk preflight, calibrated/ layout, and the
    plan saved for the run's later steps (load_plan)."""
    member = Member.coerce(member)
    p = plan(member, options, registry)
    preflight_disk(member, options.spacesaving)
    if p.engine == "native":
        prepare_layout(member, p.ebs)
    save_plan(member, p, options, run_id)
    return p


def finish_mapped(member, options: Options, run_id: str, registry: CasaRegistry | None = None,
                  runner: CasaRunner | None = None) -> dict:
    """The step after the mapped restores: gather each EB's record and finish, with the plan
    prepare saved. For the engines that cannot be mapped (scriptForPI, pipeline, manual)
    this is where the whole calibration runs."""
    member = Member.coerce(member)
    p = load_plan(member, options, run_id, registry)
    if p.engine != "native":
        return calibrate(member, options, registry, runner, p=p)
    records, missing = [], []
    for eb in p.ebs:
        rec = member.working / f"{naming.uid_to_file(eb)}.calibration.json"
        if rec.is_file():
            records.append(json.loads(rec.read_text()))
        else:
            missing.append(eb)
    if missing:
        raise PermanentError(f"{member}: no restore record for {', '.join(missing)}: their restore did not finish")
    elapsed = max((r.get("duration_s", 0) for r in records), default=0)
    return finish(member, p, options, records, elapsed, runner=runner)


def load_summary(member) -> dict:
    path = Member.coerce(member).calibrated / SUMMARY
    if not path.is_file():
        raise PermanentError(f"{path}: missing: the calibration has not finished")
    return json.loads(path.read_text())


