"""The `scriptforpi` and `pipeline` engines: the delivery's own scriptForPI.py.

The seed's procedure, unattended: in script/, start CASA with `--pipeline`
and execfile the (possibly prefixed) scriptForPI.py with SPACESAVING, DOSPLIT
and DOCONTSUB set as globals first. scriptForPI refuses an existing
../calibrated, so a leftover one from an earlier attempt is moved aside (never
deleted: it may hold the only copy of work). The full calibration (the seed's
option 2) is forced by setting the restore script aside for the run; it is
put back afterwards whatever happens.
"""
import logging
from contextlib import contextmanager
from pathlib import Path

from .calibration import Options, calibrated_dir, set_aside
from .casa.registry import CasaLauncher
from .casa.runner import CasaRunner
from .delivery import Delivery
from .errors import DeliveryError
from .paths import casa_script

log = logging.getLogger(__name__)
ASIDE_SUFFIX = ".set-aside-by-alma-regen"


@contextmanager
def restore_script_set_aside(member):
    """Hide casa_piperestorescript.py from scriptForPI for the duration."""
    restore = Delivery(member).script("restore")
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


def run_script_for_pi(member, launcher: CasaLauncher, options: Options | None = None, *,
                      force_full: bool = False, runner: CasaRunner | None = None):
    """Run scriptForPI.py in script/ under `launcher`; returns the CasaRun."""
    options = options or Options()
    member = Path(member)
    d = Delivery(member)
    script = d.script("scriptForPI")
    if script is None:
        raise DeliveryError(member / "script", "no scriptForPI.py (nor member.<MOUS>.scriptForPI.py)")
    set_aside(calibrated_dir(member))
    env = {"ALMA_REGEN_SCRIPT_FOR_PI": script.name, "SPACESAVING": options.spacesaving,
           "DOSPLIT": bool(options.dosplit), "DOCONTSUB": bool(options.docontsub)}
    cmd = launcher.command(casa_script("run_script_for_pi.py"), pipeline=launcher.has_pipeline, shell=True)
    runner = runner or CasaRunner(log)
    if force_full:
        with restore_script_set_aside(member):
            return runner.run(cmd, cwd=member / "script", env=env, timeout=options.timeout_s, label=script.name)
    return runner.run(cmd, cwd=member / "script", env=env, timeout=options.timeout_s, label=script.name)
