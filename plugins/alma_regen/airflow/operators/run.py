"""The run's bookkeeping tasks: the per-MOUS lock and the plan.

    LockMousOperator      first: takes the MOUS for this run (another live run -> retry later)
                          and holds its disk reservation (admission.py)
    CheckPublishedOperator   skips the run (saying why) when the MOUS is published as it would be again
    InspectDeliveryOperator  before the raw data: what will be staged, and the plan (log, small XCom)
    CheckStagedOperator   after staging: the plan again; fails on what is missing or broken
    ReleaseMousOperator   teardown: always runs, drops the lock and the disk reservation of this run
"""
from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk import BaseOperator

from ...errors import DeliveryError
from .mous import MousFields


def state_of(dag_id: str, run_id: str):
    """The state of another DAG run ("running", "failed", ...), through the Task SDK (None if unknown)."""
    try:
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance
        state = RuntimeTaskInstance.get_dagrun_state(dag_id=dag_id, run_id=run_id)
    except Exception:  # noqa: BLE001 - the run may have been deleted
        return None
    # The SDK's DagRunState is a plain str Enum: str() of it is "DagRunState.RUNNING", which
    # is in no list of live states (a live holder of a MOUS lock would read as stale).
    return str(getattr(state, "value", state)).lower()


class _MousBase(MousFields, BaseOperator):
    template_fields: Sequence[str] = ("mous_uid", "workdir")
    ui_color = "#e8f8f5"

    def __init__(self, *, mous_uid: str, workdir: str, **kwargs):
        super().__init__(**kwargs)
        self._set_mous(mous_uid, workdir)


class LockMousOperator(_MousBase):
    def execute(self, context: Any) -> dict:
        from ...mous_lock import acquire
        from ...naming import uid_to_file
        uid_to_file(self.mous_uid)  # a malformed uid fails here, permanently
        run = context["dag_run"]
        held = acquire(self.workdir, self.mous_uid, run.dag_id, run.run_id, state_of=state_of)
        self.log.info("MOUS %s locked for run %s", self.mous_uid, held["run_id"])
        self._reserve(context, run.run_id)
        return {"mous_uid": self.mous_uid, "run_id": held["run_id"]}

    def _reserve(self, context: Any, run_id: str):
        """Hold this run's disk reservation (admission.py) so the bulk feeder counts it.

        A run the feeder started holds one already (under this run id). Any other (an
        operator's rerun) reserves its footprint now, from the archive's listing: it is not
        admission-gated (operators go first), it only counts. Bookkeeping, not the work:
        if the archive cannot say, the run counts as in flight with 0 bytes (the free disk
        the feeder measures still sees what it writes), and a ledger fault is logged, not
        raised.
        """
        from ...admission import GB, entries, footprint, reserve
        from ...config import runtime_settings
        try:
            held = entries(self.workdir).get(run_id)
            if held:
                self.log.info("disk reservation of the bulk feeder: %.1f GB", held["bytes"] / GB)
                return
            s = runtime_settings()
            try:
                from ..hooks.archive import archive_source
                from ...staging import list_mous
                source = (context.get("params") or {}).get("source") or "request_handler"
                listing = list_mous(archive_source(source, s.request_handler_conn, s.archive_s3_conn),
                                    self.mous_uid)
                need = footprint({f.name: f.size for f in listing.all_files()}, s.footprint_factor)
            except Exception as exc:  # noqa: BLE001 - staging reports real archive faults
                self.log.warning("the archive's sizes are not known (%s): reserving 0 GB, counted as in flight", exc)
                need = 0
            reserve(self.workdir, run_id, self.mous_uid, need)
            self.log.info("disk reservation: %.1f GB (%g x the raw ASDMs + the other files)", need / GB,
                          s.footprint_factor)
        except Exception as exc:  # noqa: BLE001 - see above
            self.log.warning("could not record the disk reservation of this run: %s", exc)


class ReleaseMousOperator(_MousBase):
    def execute(self, context: Any) -> bool:
        from ...mous_lock import release
        run = context["dag_run"]
        from ... import admission
        released = release(self.workdir, self.mous_uid, run.dag_id, run.run_id)
        self.log.info("MOUS %s lock %s", self.mous_uid, "released" if released else "was not held by this run")
        # The disk reservation ends with the run, whatever became of it (this is the teardown);
        # a fault here is logged: the feeder forgets the entry of an ended run anyway.
        held = None
        try:
            held = admission.entries(self.workdir).get(run.run_id)
            if admission.release(self.workdir, run.run_id):
                self.log.info("disk reservation released")
        except Exception as exc:  # noqa: BLE001
            self.log.warning("could not release the disk reservation (the feeder will forget it): %s", exc)
        self._record_end(run, held)
        return released

    def _record_end(self, run, held):
        """The run's end in the MOUS's attempts (attempts.py): failed when any of its tasks
        failed. Bookkeeping: a fault is logged, never raised (this is the teardown)."""
        from datetime import datetime, timezone

        from ... import attempts
        from ...config import runtime_settings
        try:
            from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance
            states = RuntimeTaskInstance.get_task_states(dag_id=run.dag_id, run_ids=[run.run_id]).get(run.run_id, {})
            failed = sorted(t for t, st in states.items()
                            if t != self.task_id and str(getattr(st, "value", st)) in ("failed", "upstream_failed"))
            began = getattr(run, "start_date", None)
            seconds = (datetime.now(timezone.utc) - began).total_seconds() if began else None
            rec = attempts.record_end(self.workdir, self.mous_uid, run.run_id, failed=bool(failed), seconds=seconds,
                                      nbytes=(held or {}).get("bytes"),
                                      max_attempts=runtime_settings().bulk_max_attempts)
            if failed:
                self.log.info("run failed (%s): %d failed run(s) in a row for %s%s", ", ".join(failed),
                              rec.get("failures", 0), self.mous_uid,
                              "; parked: the bulk feeder starts it again only when forced" if rec.get("parked") else "")
        except Exception as exc:  # noqa: BLE001
            self.log.warning("could not record the run's end in the attempts file: %s", exc)


class InspectDeliveryOperator(_MousBase):
    """The plan before the raw data come: what will be staged (each EB and its size in
    the archive), the CASA version, the engines, the disk it will need. A missing
    ASDM is what staging is for, not an error; every other problem is (permanent)."""

    template_fields: Sequence[str] = ("mous_uid", "workdir", "source")

    def __init__(self, *, source: str = "request_handler", http_conn_id: str = "alma_request_handler",
                 aws_conn_id: str = "alma_archive_s3", **kwargs):
        super().__init__(**kwargs)
        self.source, self.http_conn_id, self.aws_conn_id = source, http_conn_id, aws_conn_id

    def _archive_sizes(self) -> dict | None:
        """{EB uid: bytes of its ASDM tar} as the archive lists them; None if it cannot say."""
        try:
            from ..hooks.archive import archive_source
            from ...staging import list_mous
            listing = list_mous(archive_source(self.source, self.http_conn_id, self.aws_conn_id), self.mous_uid)
            return {eb: f.size for eb, f in listing.asdms.items()}
        except Exception as exc:  # noqa: BLE001 - the sizes only inform; staging reports real faults
            self.log.info("the archive's sizes of the ASDMs are not known (%s): the disk is estimated after staging",
                          exc)
            return None

    def execute(self, context: Any) -> dict:
        from ...delivery import format_plan
        from ...steps import record_step
        member = self.member
        record_step(member.root, self.task_id, context["dag_run"].run_id)
        plan = member.delivery.plan(staged=False, archive_sizes=self._archive_sizes())
        self.log.info("regeneration plan, before staging the raw data:\n%s", format_plan(plan))
        _fail_on_errors(plan)
        return _summary(plan)


class CheckStagedOperator(_MousBase):
    """After staging: the plan again, now with raw/ as staged; fails on any error (permanent)."""

    def execute(self, context: Any) -> dict:
        from ...delivery import format_plan
        plan = self.member.delivery.plan()
        self.log.info("staged; the plan as it now stands:\n%s", format_plan(plan))
        _fail_on_errors(plan)
        return _summary(plan)


def _fail_on_errors(plan: dict):
    errors = [p for p in plan["problems"] if p["severity"] == "error"]
    if errors:
        raise DeliveryError(errors[0]["path"], errors[0]["message"] +
                            (f" (+{len(errors) - 1} more, see the log)" if len(errors) > 1 else ""))


def _summary(plan: dict) -> dict:
    return {
        "mous_uid": plan["mous_uid"], "project": plan["project"],
        "casa_version": plan["casa_version"]["version"],
        "calibration": plan["calibration"]["kind"], "imaging": plan["imaging"]["kind"],
        "split": plan["split"]["needed"], "ebs": plan["ppr"]["ebs"],
    }


class CheckPublishedOperator(_MousBase):
    """Skip the whole regeneration when the MOUS is already published with the same
    inputs (archive file names and sizes) and CASA, unless forced."""

    template_fields: Sequence[str] = ("mous_uid", "workdir", "source", "force", "products_url")

    def __init__(self, *, source: str, force=False, products_url: str = "", http_conn_id: str,
                 aws_conn_id: str, products_conn_id: str, **kwargs):
        super().__init__(**kwargs)
        self.source, self.force, self.products_url = source, force, products_url
        self.http_conn_id, self.aws_conn_id, self.products_conn_id = http_conn_id, aws_conn_id, products_conn_id

    def execute(self, context: Any) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from ..hooks.archive import archive_source
        from ..hooks.products import s3_client
        from ...products.manifest import latest_manifest
        from ...products.reuse import current_casa, same_as_published
        from ...staging import list_mous
        if str(self.force).strip().lower() in ("true", "1", "yes", "on"):
            self.log.info("%s: force=true: regenerating without looking at what is published", self.mous_uid)
            return {"reuse": False, "why": "force=True"}
        if not self.products_url:
            self.log.info("%s: no products_url is configured: nothing is published to compare with",
                          self.mous_uid)
            return {"reuse": False, "why": "no products_url: nothing is published"}
        listing = list_mous(archive_source(self.source, self.http_conn_id, self.aws_conn_id), self.mous_uid)
        files = {f.name: f.size for f in listing.all_files()}
        manifest = latest_manifest(s3_client(self.products_conn_id), self.products_url, self.mous_uid)
        same, why = same_as_published(manifest, files, current_casa())
        if same:
            msg = (f"{self.mous_uid}: {why}: every later step is skipped; "
                   "trigger again with force=true to regenerate it anyway")
            self.log.info("%s", msg)
            raise AirflowSkipException(msg)
        self.log.info("%s: regenerating: %s (force=true would regenerate even an unchanged MOUS)",
                      self.mous_uid, why)
        return {"reuse": False, "why": why}
