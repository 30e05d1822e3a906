"""The `scriptforpi` and `pipeline` engines: the delivery's own scriptForPI.py.

The seed's procedure, unattended: in script/, start CASA with `--pipeline`
and run the (possibly prefixed) scriptForPI.py in the shell's own global
namespace with SPACESAVING, DOSPLIT and DOCONTSUB set there first, as a
person does with `DOSPLIT=True; execfile('scriptForPI.py', globals())`
(include/casa_scripts/run_script_for_pi.py). scriptForPI refuses an existing
../calibrated, so a leftover one from an earlier attempt is moved aside (never
deleted: it may hold the only copy of work). The full calibration (the seed's
option 2) is forced by setting the restore script aside for the run; it is
put back afterwards whatever happens. scriptForPI then lays out working/ for a
pipeline rerun itself (the EBs linked in under their bare names).

A pipeline run is judged by its own results, not by what it prints: its
weblog prints tracebacks while every task succeeds, and scriptForPI exits 0
after it stopped early or found no PPR. The wrapper reports the script's own
error, every pipeline task's outcome from the saved context, and what is in
calibrated/; `check_result` turns that into a verdict.
"""
import json
import logging
from contextlib import contextmanager, nullcontext
from pathlib import Path

from .calibrated import Options, set_aside
from .casa.registry import CasaLauncher
from .casa.runner import CasaRunner
from .delivery import version_text
from .errors import CasaError, DeliveryError
from .member import Member
from .paths import casa_script

log = logging.getLogger(__name__)
ASIDE_SUFFIX = ".set-aside-by-alma-regen"
# scriptForPI v1.25 and older are Python 2 (`print '...'`, `globals().has_key`; read: v1.7, v1.15,
# v1.23, and v1.25 per DOMAIN.md); v1.34 is Python 3. CASA 6 runs Python 3 only.
PYTHON2_UNTIL = (1, 25)
RESULT = "scriptForPI.result.json"  # the wrapper's report, kept in calibrated/


@contextmanager
def restore_script_set_aside(member):
    """Hide casa_piperestorescript.py from scriptForPI for the duration."""
    restore = Member.coerce(member).delivery.script("restore")
    if restore is None:
        yield None
        return
    aside = restore.with_name(restore.name + ASIDE_SUFFIX)
    restore.rename(aside)
    log.info("set %s aside to force the full calibration", restore.name)
    try:
        yield restore
    finally:
        aside.rename(restore)
        log.info("put %s back", restore.name)


def put_back_leftovers(member):
    """A run killed outright (SIGKILL, a lost worker) could not put the restore script
    back; without it the next run would silently do a full calibration instead."""
    member = Member.coerce(member)
    for aside in member.script.glob("*" + ASIDE_SUFFIX):
        original = aside.with_name(aside.name[: -len(ASIDE_SUFFIX)])
        if not original.exists():
            aside.rename(original)
            member.forget_delivery()  # script/ changed: the step's delivery model lists it again
            log.warning("put %s back: an earlier run was killed before it could", original.name)


def script_globals(options: Options) -> dict:
    """The global variables scriptForPI reads, with the types it insists on."""
    return {"SPACESAVING": int(options.spacesaving), "DOSPLIT": bool(options.dosplit),
            "DOCONTSUB": bool(options.docontsub)}


def run_script_for_pi(member, launcher: CasaLauncher, options: Options | None = None, *,
                      force_full: bool = False, runner: CasaRunner | None = None):
    """Run scriptForPI.py in script/ under `launcher`; returns (CasaRun, the wrapper's report).

    Raises CasaError when the script stopped on an error or a pipeline task failed."""
    options = options or Options()
    member = Member.coerce(member)
    put_back_leftovers(member)
    script = member.delivery.script("scriptForPI")
    if script is None:
        raise DeliveryError(member.script, "no scriptForPI.py (nor member.<MOUS>.scriptForPI.py)")
    version = member.delivery.scriptforpi_version()
    if version and version <= PYTHON2_UNTIL and launcher.version.major >= 6:
        raise CasaError(f"{script.name} is scriptForPI {version_text(version)}, a Python 2 script, and CASA "
                        f"{launcher.version} runs Python 3 only: use the native engine (or a CASA 5 with its pipeline)")
    set_aside(member.calibrated)
    # Outside calibrated/: scriptForPI must find no ../calibrated when it starts.
    report_path = member.root / f".{RESULT}"
    report_path.unlink(missing_ok=True)
    env = {"ALMA_REGEN_SCRIPT_FOR_PI": script.name, "ALMA_REGEN_RESULT": str(report_path.resolve()),
           "ALMA_REGEN_SCRIPT_FOR_PI_GLOBALS": json.dumps(script_globals(options))}
    cmd = launcher.command(casa_script("run_script_for_pi.py"), pipeline=launcher.has_pipeline, shell=True)
    runner = runner or CasaRunner(log)
    with restore_script_set_aside(member) if force_full else nullcontext():
        try:
            run = runner.run(cmd, cwd=member.script, env=env, timeout=options.timeout_s, label=script.name,
                             strict=False)
        except CasaError as exc:  # a non-zero exit: the report, when written, says why
            report = _take_report(member, report_path)
            failure = _failure(script.name, report, exc.run) if report else None
            if failure is None:
                raise
            raise failure from exc
    report = _take_report(member, report_path)
    if report is None:
        raise CasaError(f"{script.name}: CASA exited 0 but the wrapper wrote no report: it did not run to the end")
    error = _failure(script.name, report, run)
    if error is not None:
        raise error
    return run, report


def _take_report(member: Member, path: Path) -> dict | None:
    """Read the wrapper's report and keep it in calibrated/ beside the outputs."""
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    cal = member.calibrated
    if cal.is_dir():
        path.replace(cal / RESULT)
    return report


def gist(text: str) -> str:
    """The last line of a traceback that says something: a pipeline's wrapped exception
    (`PipelineException(... traceback ...)`) ends in a line holding only ')'. The CASA-side
    wrapper (include/casa_scripts/run_script_for_pi.py) words each task's error by the same rule."""
    lines = [ln.strip() for ln in text.strip().splitlines() if any(c.isalnum() for c in ln)]
    return lines[-1] if lines else text.strip()


def _failure(name: str, report: dict, run) -> CasaError | None:
    """The script's own error or the failed pipeline tasks, as one error (None: neither)."""
    failed = [t for t in report["tasks"] if t["failed"]]
    if not report.get("error") and not failed:
        return None
    parts = []
    if failed:
        parts.append("pipeline task(s) failed: " + "; ".join(
            f"stage {t['stage']} {t['task']}: {t['error']}" for t in failed))
    if report.get("error"):
        parts.append("the script stopped: " + gist(report["error"]))
    exc = CasaError(f"{name}: " + " | ".join(parts))
    exc.run = run
    return exc
