"""`alma-regen run`: the whole chain for one MOUS, without Airflow.

stage -> inspect -> calibrate -> image -> fidelity (-> publish) with the same
library functions the DAG's operators call, one after the other in this
process (CASA still runs in child processes). For operators who want one MOUS
by hand, and the no-Airflow baseline of bench/orchestration.
"""
import logging
import time

from dataclasses import replace

from . import calibration
from .config import Settings
from .delivery import format_plan
from .errors import DeliveryError
from .member import Member
from .mous_lock import held
from .staging import StageOptions, open_source, stage_mous
from .timeouts import casa_timeout

log = logging.getLogger(__name__)


def run_mous(mous: str, source_url: str, workdir, *, cal_options: calibration.Options | None = None,
             stage_options: StageOptions | None = None, parallel: int = 2, imaging: str = "auto",
             publish_to: str | None = None, run_id: str | None = None, require_all_ebs: bool = False) -> dict:
    """Stage, check, calibrate, image, compare and (optionally) publish one MOUS.
    Returns a summary with the time of each step.

    require_all_ebs: a PPR EB the archive lacks is an error; by default the run goes on with the
    other EBs, as scriptForPI does, and the published manifest records it as partial."""
    timings = {}

    def step(name, fn, *args, **kw):
        t = time.monotonic()
        out = fn(*args, **kw)
        timings[name] = round(time.monotonic() - t, 3)
        return out

    # A malformed uid (a trailing newline...) is refused before anything is made.
    member = Member.of(workdir, mous)
    # The MOUS's lock, the one the DAG's runs take: no DAG run or other command works in it meanwhile.
    # Either way of asking for every EB counts (the argument, or stage options that say so).
    stage_options = stage_options or StageOptions()
    stage_options = replace(stage_options, require_all_ebs=require_all_ebs or stage_options.require_all_ebs)
    with held(workdir, mous, "run"):
        return _run_locked(member, mous, source_url, workdir, step, timings, cal_options, stage_options, parallel,
                           imaging, publish_to, run_id)


def _run_locked(member, mous, source_url, workdir, step, timings, cal_options, stage_options, parallel, imaging,
                publish_to, run_id) -> dict:
    step("stage", stage_mous, mous, open_source(source_url), workdir, stage_options)
    # Every CASA step's limit, from the raw data now staged (alma_regen.timeouts); an explicit one wins.
    casa_limit = casa_timeout(member, Settings.from_env())
    cal_options = cal_options or calibration.Options()
    if not cal_options.timeout_s:
        cal_options = replace(cal_options, timeout_s=casa_limit)
    casa_limit = cal_options.timeout_s
    # The delivery model, read once the files are staged, serves every step after.
    # The disk judged at the run's own SPACESAVING, as the calibration's preflight will judge it.
    plan = step("inspect", lambda: member.delivery.plan(require_all_ebs=stage_options.require_all_ebs,
                                                        spacesaving=cal_options.spacesaving))
    log.info("the plan, staged:\n%s", format_plan(plan))
    errors = [p for p in plan["problems"] if p["severity"] == "error"]
    if errors:
        raise DeliveryError(errors[0]["path"], errors[0]["message"] +
                            (f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""))
    cal = step("calibrate", calibration.calibrate, member, cal_options, parallel=parallel)
    result = {"mous_uid": mous, "member_dir": str(member.root), "plan": plan, "calibration": cal,
              "imaging": None, "fidelity": None, "manifest": None, "timings_s": timings}
    if imaging != "none":
        from .fidelity import check_fidelity
        from .imaging import image
        result["imaging"] = step("image", image, member, imaging, workers=parallel, timeout=casa_limit)
        result["fidelity"] = step("fidelity", check_fidelity, member, timeout=casa_limit)
    if publish_to:
        from .products.publish import publish
        result["manifest"] = step("publish", publish, member, publish_to, run=run_id)
    return result
