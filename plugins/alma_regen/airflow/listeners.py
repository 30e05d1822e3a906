"""Listeners of the alma-regen plugin (they run in the task's process).

- every alma_regenerate task, when it starts, notes its step in the member
  folder (`steps.record_step`): what the deadline alert falls back on;
- every alma_regenerate task that fails notes its error for the MOUS's attempts
  (attempts.py; the run's teardown decides whether the run failed);
- every alma-regen task, when it ends, records its duration as a metric:
  `alma_regen.step_duration` (milliseconds, tags dag_id and task_id) and
  `alma_regen.step_duration.<dag_id>.<task_id>` for StatsD without tags.
Listeners never fail a task: every error is logged and dropped.
"""
from __future__ import annotations

import logging
import time

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)

DAGS = ("alma_regenerate", "alma_bulk_reprocess")
METRIC = "alma_regen.step_duration"
_started: dict = {}


def _key(ti):
    return (ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1), getattr(ti, "try_number", 0))


def _mous(ti):
    try:
        ctx = ti.get_template_context()
        dag_run = ctx.get("dag_run")
        return ((getattr(dag_run, "conf", None) or {}).get("mous_uid")) or None
    except Exception:  # noqa: BLE001
        return None


@hookimpl
def on_task_instance_running(previous_state, task_instance):
    try:
        if task_instance.dag_id not in DAGS:
            return
        _started[_key(task_instance)] = time.monotonic()
        if task_instance.dag_id != "alma_regenerate":
            return
        mous = _mous(task_instance)
        # The teardown is never where a run "is"; and after a publish that kept nothing
        # (workspace.py) a note would bring back an empty member folder.
        if mous and task_instance.task_id != "release_mous":
            from pathlib import Path

            from .. import naming
            from ..config import settings
            from ..steps import record_step
            # The workdir is a parse-time setting (the Variable cannot change it): no round trip
            # to the Execution API for the Variable in every task (bench/orchestration.py).
            record_step(Path(settings().workdir) / naming.member_dir(mous), task_instance.task_id,
                        task_instance.run_id)
    except Exception as exc:  # noqa: BLE001
        log.debug("alma-regen listener (running): %s", exc)


def _record(ti, outcome: str):
    try:
        if ti.dag_id not in DAGS:
            return
        t0 = _started.pop(_key(ti), None)
        if t0 is not None:
            ms = (time.monotonic() - t0) * 1000.0
        elif getattr(ti, "start_date", None) is not None:
            from datetime import datetime, timezone
            ms = (datetime.now(timezone.utc) - ti.start_date).total_seconds() * 1000.0
        else:
            return
        from airflow.sdk.observability.stats import timing
        tags = {"dag_id": ti.dag_id, "task_id": ti.task_id, "outcome": outcome}
        timing(METRIC, ms, tags=tags)
        timing(f"{METRIC}.{ti.dag_id}.{ti.task_id}", ms)
        log.info("alma-regen: %s.%s %s in %.1f s", ti.dag_id, ti.task_id, outcome, ms / 1000.0)
    except Exception as exc:  # noqa: BLE001
        log.debug("alma-regen listener (metrics): %s", exc)


@hookimpl
def on_task_instance_success(previous_state, task_instance):
    _record(task_instance, "success")


@hookimpl
def on_task_instance_failed(previous_state, task_instance, error):
    _record(task_instance, "failed")
    # The error, for the run's end to take as its reason if the run fails (attempts.py).
    try:
        mous = task_instance.dag_id == "alma_regenerate" and _mous(task_instance)
        if mous:
            from .. import attempts
            from ..config import settings
            attempts.note_error(settings().workdir, mous, task_instance.run_id, task_instance.task_id,
                                error if error is not None else "failed")
    except Exception as exc:  # noqa: BLE001
        log.debug("alma-regen listener (attempts): %s", exc)
