"""`alma-regen run`: the whole chain for one MOUS, without Airflow.

stage -> inspect -> calibrate -> image -> fidelity (-> publish) with the same
library functions the DAG's operators call, one after the other in this
process (CASA still runs in child processes). For operators who want one MOUS
by hand, and the no-Airflow baseline of bench/orchestration.
"""
import logging
import time
from pathlib import Path

from . import calibration
from .delivery import Delivery
from .errors import DeliveryError
from .staging import StageOptions, open_source, stage_mous

log = logging.getLogger(__name__)


def run_mous(mous: str, source_url: str, workdir, *, cal_options: calibration.Options | None = None,
             stage_options: StageOptions | None = None, parallel: int = 2, imaging: str = "auto",
             publish_to: str | None = None, run_id: str | None = None) -> dict:
    """Stage, check, calibrate, image, compare and (optionally) publish one MOUS.
    Returns a summary with the time of each step."""
    timings = {}

    def step(name, fn, *args, **kw):
        t = time.monotonic()
        out = fn(*args, **kw)
        timings[name] = round(time.monotonic() - t, 3)
        return out

    staged = step("stage", stage_mous, mous, open_source(source_url), workdir, stage_options)
    member = Path(staged["member_dir"])
    plan = step("inspect", lambda: Delivery(member).plan())
    errors = [p for p in plan["problems"] if p["severity"] == "error"]
    if errors:
        raise DeliveryError(errors[0]["path"], errors[0]["message"] +
                            (f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""))
    cal = step("calibrate", calibration.calibrate, member, cal_options, parallel=parallel)
    result = {"mous_uid": mous, "member_dir": str(member), "plan": plan, "calibration": cal,
              "imaging": None, "fidelity": None, "manifest": None, "timings_s": timings}
    if imaging != "none":
        from .fidelity import check_fidelity
        from .imaging import image
        result["imaging"] = step("image", image, member, imaging, workers=parallel)
        result["fidelity"] = step("fidelity", check_fidelity, member)
    if publish_to:
        from .publish import publish
        result["manifest"] = step("publish", publish, member, publish_to, run=run_id)
    return result
