"""When an alma_regenerate run is late, and what the alert says.

`MousSizeDeadline` is the DeadlineAlert reference of alma_regenerate: the run's
queued time plus the MOUS's allowance, evaluated when the run is created (in
the process that creates it: the api-server for UI/REST/CLI triggers and for
the bulk DAG's TriggerDagRunOperator, the scheduler otherwise). The allowance,
from the settings of that process (environment, then the `alma_regen`
Variable, read from the metadata database through the session the scheduler
hands us):

    deadline_seconds > 0   exactly that (tests, tight SLAs)
    deadline_minutes > 0   exactly that
    otherwise              deadline_base_minutes + deadline_minutes_per_gb x GB of raw ASDM
                           tars, as the request handler's DataLink lists them (one small
                           HTTP request, 3 s at most; base only when it cannot be had)

It is registered by the plugin (`AlmaRegenPlugin.deadline_references`): the
scheduler only deserializes custom references that a plugin declares. The
DeadlineAlert's interval is the part of the allowance that does not depend on
the MOUS, so the UI reads "Must complete within an hour of queue time + 30 min
per GB of raw ASDMs" (`mous_size_deadline`); each run's note gives its own
allowance and what it came from (alma_regen.airflow.run_notes).

`run_late` is the DeadlineAlert callback (it runs in the triggerer): one alert
naming the MOUS, the step the run is in (its running task, asked through the
Task Execution API; else the step the tasks noted in the member folder) and the
log URL. A run that already ended in failure before its deadline raises
nothing here: its `run_failed` alert said it all, so a failed run gives exactly
one alert.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from airflow.sdk.definitions.deadline import BaseDeadlineReference

log = logging.getLogger(__name__)

ACTIVE = ("running", "queued", "up_for_retry", "up_for_reschedule", "deferred", "scheduled")
LOOKUP_TIMEOUT_S = 3.0


@dataclass(eq=False)  # the base class compares and hashes by the serialized form
class MousSizeDeadline(BaseDeadlineReference):
    """queued_at + the allowance of the run's MOUS (see the module).

    The UI words a DeadlineAlert as "Must complete within <interval> of <reference>".
    So that it reads as what happens, the DAG's interval is the allowance its settings
    give before any size (`counted_s`, `mous_size_deadline`) and this reference names
    itself after the rest ("queue time + 30 min per GB of raw ASDMs"). The allowance
    itself is always the one of the settings when the run is created: this reference
    returns queued_at + allowance - counted_s, and Airflow adds the interval back.
    """

    counted_s: float = 0.0       # the interval the DeadlineAlert adds (subtracted here)
    per_gb_minutes: int = 0      # for the name only: 0 when the allowance is fixed

    required_kwargs = {"dag_id", "run_id"}

    @property
    def reference_name(self) -> str:
        # Shown by the UI as a phrase (an i18n key with a default: no '.' nor ':').
        if self.per_gb_minutes > 0:
            return f"queue time + {self.per_gb_minutes} min per GB of raw ASDMs"
        return "queue time"

    def serialize_reference(self) -> dict:
        return {"reference_type": self.reference_name, "counted_s": self.counted_s,
                "per_gb_minutes": self.per_gb_minutes}

    @classmethod
    def deserialize_reference(cls, reference_data: dict) -> "MousSizeDeadline":
        return cls(counted_s=float(reference_data.get("counted_s") or 0.0),
                   per_gb_minutes=int(reference_data.get("per_gb_minutes") or 0))

    def _evaluate_with(self, *, session, dag_id: str, run_id: str, **kwargs) -> datetime | None:
        from sqlalchemy import select

        from airflow.models.dagrun import DagRun
        from airflow.utils import timezone

        row = session.execute(select(DagRun.queued_at, DagRun.conf).where(
            DagRun.dag_id == dag_id, DagRun.run_id == run_id)).one_or_none()
        if row is None:
            log.warning("deadline: no DagRun %s/%s", dag_id, run_id)
            return None
        start = row.queued_at or timezone.utcnow()
        conf = row.conf or {}
        s = server_settings(session)
        allowance, why = allowance_and_reason(s, conf.get("mous_uid"), conf.get("source") or "request_handler")
        log.info("deadline of %s %s: %s after queued (%s: %s)", dag_id, run_id, allowance, conf.get("mous_uid"), why)
        return start + allowance - timedelta(seconds=self.counted_s)


def alert_interval(s) -> tuple:
    """(interval, per_gb_minutes) of the DeadlineAlert for the parse-time settings `s`:
    the part of the allowance that does not depend on the MOUS, and the part that does."""
    if getattr(s, "deadline_seconds", 0) > 0:
        return timedelta(seconds=s.deadline_seconds), 0
    if s.deadline_minutes > 0:
        return timedelta(minutes=s.deadline_minutes), 0
    return timedelta(minutes=s.deadline_base_minutes), s.deadline_minutes_per_gb


def mous_size_deadline(s) -> tuple:
    """(reference, interval) for alma_regenerate's DeadlineAlert with settings `s`."""
    interval, per_gb = alert_interval(s)
    return MousSizeDeadline(counted_s=interval.total_seconds(), per_gb_minutes=per_gb), interval


def server_settings(session=None):
    """Settings in a server process (scheduler, api-server): the environment, then the
    `alma_regen` Variable read from the metadata database (the Task SDK is for tasks)."""
    from ..config import VARIABLE, Settings, with_variable
    try:
        from sqlalchemy import select

        from airflow.models.variable import Variable
        if session is None:
            from airflow.utils.session import create_session
            with create_session() as own:
                var = own.scalar(select(Variable).where(Variable.key == VARIABLE))
                raw = var.val if var is not None else None
        else:
            var = session.scalar(select(Variable).where(Variable.key == VARIABLE))
            raw = var.val if var is not None else None
    except Exception as exc:  # noqa: BLE001 - a broken Variable must not stop run creation
        log.warning("deadline: cannot read the %s Variable: %s", VARIABLE, exc)
        return Settings.from_env()
    try:
        return with_variable(raw)
    except (ValueError, TypeError) as exc:
        log.warning("deadline: ignoring the %s Variable: %s", VARIABLE, exc)
        return Settings.from_env()


def allowance_for(s, mous: str | None, source: str = "request_handler") -> timedelta:
    return allowance_and_reason(s, mous, source)[0]


def allowance_and_reason(s, mous: str | None, source: str = "request_handler") -> tuple:
    """(allowance, what it was derived from, in words) for a run of `mous`."""
    if getattr(s, "deadline_seconds", 0) > 0:
        return timedelta(seconds=s.deadline_seconds), f"deadline_seconds = {s.deadline_seconds} in the settings"
    if s.deadline_minutes > 0:
        return timedelta(minutes=s.deadline_minutes), f"deadline_minutes = {s.deadline_minutes} in the settings"
    raw = raw_bytes(s, mous, source) if mous else None
    if raw is None:
        where = "the S3 mirror is not sized here" if source != "request_handler" else \
            "the request handler did not give the size"
        return timedelta(minutes=s.deadline_base_minutes), \
            f"the base {s.deadline_base_minutes} min only: {where}"
    gb = raw / 1e9
    return timedelta(minutes=s.deadline_base_minutes + s.deadline_minutes_per_gb * gb), \
        (f"{s.deadline_base_minutes} min + {s.deadline_minutes_per_gb} min per GB x {gb:.2f} GB "
         "of raw ASDMs (the request handler's listing)")


def describe(allowance: timedelta) -> str:
    """1 h 12 min, 45 min, 20 s: an allowance for a person."""
    total = int(round(allowance.total_seconds()))
    if total < 120:
        return f"{total} s"
    h, m = divmod(round(total / 60), 60)
    return f"{h} h {m} min" if h and m else (f"{h} h" if h else f"{m} min")


def raw_bytes(s, mous: str, source: str) -> int | None:
    """Bytes of the MOUS's raw ASDM tars, as the request handler lists them; None if unknown."""
    if source != "request_handler":
        return None  # the S3 mirror: listing it would need credentials here; the base allowance applies
    try:
        from airflow.models.connection import Connection

        from ..staging import list_mous
        from ..staging.sources import HttpSource
        conn = Connection.get_connection_from_secrets(s.request_handler_conn)
        host = (conn.host or "").rstrip("/")
        url = host if "://" in host else f"{conn.schema or 'http'}://{host}" + (f":{conn.port}" if conn.port else "")
        auth = (conn.login, conn.password or "") if conn.login else None
        listing = list_mous(HttpSource(url, auth=auth, cookie=conn.extra_dejson.get("cookie", ""),
                                       timeout=LOOKUP_TIMEOUT_S), mous)
        return sum(f.size or 0 for f in listing.asdms.values())
    except Exception as exc:  # noqa: BLE001 - never block run creation on the archive
        log.warning("deadline: size of %s unknown (%s); base allowance", mous, exc)
        return None


# ------------------------------------------------------------------ the callback

def _running_steps(dag_id: str, run_id: str) -> list:
    """Tasks of the run that are not finished, through the Task Execution API (triggerer comms)."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance
    states = RuntimeTaskInstance.get_task_states(dag_id=dag_id, run_ids=[run_id]).get(run_id, {})
    running = sorted(t for t, st in states.items() if str(st).lower().split(".")[-1] == "running")
    waiting = sorted(t for t, st in states.items() if str(st).lower().split(".")[-1] in ACTIVE[1:])
    return running or waiting


async def run_late(context: dict, **kwargs):
    """DeadlineAlert callback of alma_regenerate: the run is late (exactly one alert per late run)."""
    from pathlib import Path

    from .. import naming
    from ..config import runtime_settings
    from ..steps import current_step
    from .alerts import run_url, send

    dag_run = context.get("dag_run") or {}
    deadline_time = str((context.get("deadline") or {}).get("deadline_time"))
    dag_id = dag_run.get("dag_id") or "alma_regenerate"
    run_id = dag_run.get("dag_run_id") or dag_run.get("run_id") or ""
    state = str(dag_run.get("state") or "").lower()
    if state == "failed" and _ended_by(dag_run.get("end_date"), (context.get("deadline") or {}).get("deadline_time")):
        log.info("run %s failed before its deadline %s: its failure alert stands alone", run_id, deadline_time)
        return f"no alert: run {run_id} had failed before its deadline (its failure alert stands)"
    if state == "success":
        log.info("run %s succeeded: no deadline alert", run_id)
        return f"no alert: run {run_id} succeeded"
    conf = dag_run.get("conf") or {}
    mous = conf.get("mous_uid") or kwargs.get("mous_uid")
    step = None
    try:
        from asgiref.sync import sync_to_async
        steps = await sync_to_async(_running_steps)(dag_id, run_id)
        step = ",".join(steps) if steps else None
    except Exception as exc:  # noqa: BLE001 - the alert matters more than its detail
        log.warning("could not ask which task is running: %s", exc)
    if not step and mous:
        workdir = kwargs.get("workdir") or runtime_settings().workdir
        step = current_step(Path(workdir) / naming.member_dir(mous))
    event = {"event": "deadline_missed", "mous_uid": mous, "dag_id": dag_id, "run_id": run_id,
             "step": step or "unknown", "deadline": deadline_time, "state": state}
    task = _task_of((step or "").split(",")[0])
    event["log_url"] = run_url(dag_id, run_id) + (f"/tasks/{task}" if task and task != "unknown" else "")
    from asgiref.sync import sync_to_async
    channels = await sync_to_async(send)(event)
    # Airflow stores what a callback returns as text (a dict breaks the triggerer on SQLite).
    return f"deadline alert for {mous} ({step or 'unknown'}) sent on {', '.join(channels) or 'no channel'}"


def _when(value) -> datetime | None:
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None


def _ended_by(end_date, deadline_time) -> bool:
    """The run ended no later than its deadline (True when either time is unknown: the run
    failed, and its failure alert is the one that counts)."""
    end, deadline = _when(end_date), _when(deadline_time)
    if end is None or deadline is None:
        return True
    return end <= deadline


def _task_of(step: str) -> str:
    """`restore_eb_1` (a mapped instance, as the states API names it) -> `restore_eb`."""
    head, _, tail = step.rpartition("_")
    return head if head and tail.isdigit() else step
