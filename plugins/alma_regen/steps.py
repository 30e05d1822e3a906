"""Where a run is: the step note in its member folder (.alma-regen-step).

Tasks note their step as they start (the listener, alma_regen.airflow.listeners);
the deadline alert reads it from the shared volume to say where a late run is,
and the feeder (bulk.py) takes its presence as "this MOUS was attempted before".
"""
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)
STEP_FILE = ".alma-regen-step"  # in the member folder: the step a run is in


def record_step(member_dir, step: str, run_id: str = ""):
    """Tasks note where a run is; the deadline callback reads it (shared volume)."""
    try:
        Path(member_dir).mkdir(parents=True, exist_ok=True)
        (Path(member_dir) / STEP_FILE).write_text(json.dumps({"step": step, "run_id": run_id}))
    except OSError as exc:  # never fail a task for a progress note
        log.warning("could not record the step: %s", exc)


def current_step(member_dir) -> str:
    try:
        return json.loads((Path(member_dir) / STEP_FILE).read_text())["step"]
    except (OSError, ValueError, KeyError):
        return "unknown"
