"""`alma-regen run`: the whole chain for one MOUS, without Airflow.

stage -> inspect -> calibrate (-> image -> publish) with the same library
functions the DAG's operators call, one after the other in this process (CASA
still runs in child processes). Used by operators who want one MOUS by hand,
by the demo, and by bench/orchestration as the no-Airflow baseline.
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
             stage_options: StageOptions | None = None, parallel: int = 2) -> dict:
    """Stage, check and calibrate one MOUS; returns a summary with timings per step."""
    timings = {}
    t = time.monotonic()
    staged = stage_mous(mous, open_source(source_url), workdir, stage_options)
    timings["stage"] = round(time.monotonic() - t, 3)
    member = Path(staged["member_dir"])

    t = time.monotonic()
    plan = Delivery(member).plan()
    timings["inspect"] = round(time.monotonic() - t, 3)
    errors = [p for p in plan["problems"] if p["severity"] == "error"]
    if errors:
        raise DeliveryError(errors[0]["path"], errors[0]["message"] +
                            (f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""))

    t = time.monotonic()
    cal = calibration.calibrate(member, cal_options, parallel=parallel)
    timings["calibrate"] = round(time.monotonic() - t, 3)
    return {"mous_uid": mous, "member_dir": str(member), "plan": plan, "calibration": cal,
            "timings_s": timings}
