"""The note of an alma_regenerate run: its MOUS and its deadline, in words.

A run triggered from the UI's form gets an id Airflow makes up (`manual__<time>`);
its note is what names the MOUS in the run's header and the Reprocessing view:

    uid://A001/X1296/X133 · deadline 17:27 UTC, 1 h 12 min after it was queued
    (60 min + 30 min per GB x 0.40 GB of raw ASDMs)

A listener sets it in the scheduler when the run starts. Not when the run is
created: the REST API writes a caller's note after creating the run and fails
on a note already there. A note the caller gave (the form's, the REST API's,
the bulk feeder's) is kept as it is. The allowance is the run's deadline minus
its queue time (alma_regen.airflow.deadlines); what it came from is told back from the
settings (linear in the raw size, so the size follows from the allowance).
Listeners never fail a run: every error is logged and dropped.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)

DAG_ID = "alma_regenerate"


def derivation(allowance: timedelta, s) -> str:
    """What an allowance came from, for the settings `s` (alma_regen.airflow.deadlines.allowance_and_reason)."""
    if getattr(s, "deadline_seconds", 0) > 0:
        return f"deadline_seconds = {s.deadline_seconds} in the settings"
    if s.deadline_minutes > 0:
        return f"deadline_minutes = {s.deadline_minutes} in the settings"
    extra_min = allowance.total_seconds() / 60 - s.deadline_base_minutes
    if s.deadline_minutes_per_gb <= 0 or extra_min < 0.005:
        return f"the base {s.deadline_base_minutes} min: no raw size was known"
    gb = extra_min / s.deadline_minutes_per_gb
    return f"{s.deadline_base_minutes} min + {s.deadline_minutes_per_gb} min per GB x {gb:.2f} GB of raw ASDMs"


def run_note(mous: str, queued_at: datetime | None, deadline: datetime | None, s=None) -> str:
    """The note of a run of `mous` (see the module)."""
    from .deadlines import describe
    if deadline is None or queued_at is None:
        return f"{mous} · no deadline alert"
    allowance = deadline - queued_at
    why = f" ({derivation(allowance, s)})" if s is not None else ""
    return (f"{mous} · deadline {deadline.strftime('%H:%M')} UTC, {describe(allowance)} after it was queued"
            f"{why}")


@hookimpl
def on_dag_run_running(dag_run, msg: str):
    try:
        if dag_run.dag_id != DAG_ID or dag_run.note:
            return
        mous = (dag_run.conf or {}).get("mous_uid")
        if not mous:
            return
        from sqlalchemy import func, select
        from sqlalchemy.orm import object_session

        from airflow.models.deadline import Deadline

        from .deadlines import server_settings
        session = object_session(dag_run)
        deadline, s = None, None
        if session is not None:
            deadline = session.scalar(select(func.min(Deadline.deadline_time)).where(
                Deadline.dagrun_id == dag_run.id))
            s = server_settings(session)
        dag_run.note = run_note(mous, dag_run.queued_at, deadline, s)
    except Exception as exc:  # noqa: BLE001 - a note is never worth a scheduler error
        log.warning("alma-regen: could not note the MOUS of run %s: %s", getattr(dag_run, "run_id", "?"), exc)
