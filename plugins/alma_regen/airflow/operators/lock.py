"""The run's lock: the first task takes the MOUS for this run, the teardown gives it back.

    LockMousOperator      first: takes the MOUS for this run (another live run -> retry later)
                          and holds its disk reservation (admission.py)
    ReleaseMousOperator   teardown: always runs, drops the lock and the disk reservation of this
                          run, and records how the run ended (attempts.py)
"""
from __future__ import annotations

from typing import Any

from .mous import MousOperator, run_listing


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


class LockMousOperator(MousOperator):
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
                source = (context.get("params") or {}).get("source") or "request_handler"
                # The run's listing (run_listing): the later steps read it instead of asking again.
                listing = run_listing(self, context, archive_source(source, s.request_handler_conn,
                                                                    s.archive_s3_conn))
                need = footprint({f.name: f.size for f in listing.all_files()}, s.footprint_factor)
            except Exception as exc:  # noqa: BLE001 - staging reports real archive faults
                self.log.warning("the archive's sizes are not known (%s): reserving 0 GB, counted as in flight", exc)
                need = 0
            reserve(self.workdir, run_id, self.mous_uid, need)
            self.log.info("disk reservation: %.1f GB (%g x the raw ASDMs + the other files)", need / GB,
                          s.footprint_factor)
        except Exception as exc:  # noqa: BLE001 - see above
            self.log.warning("could not record the disk reservation of this run: %s", exc)


class ReleaseMousOperator(MousOperator):
    def execute(self, context: Any) -> bool:
        from ...mous_lock import release
        run = context["dag_run"]
        from ... import admission
        released = release(self.workdir, self.mous_uid, run.dag_id, run.run_id)
        self.log.info("MOUS %s lock %s", self.mous_uid, "released" if released else "was not held by this run")
        self._forget_listing(run.run_id)
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

    def _forget_listing(self, run_id: str) -> None:
        """The archive listing the run's steps shared (staging/run_listing.py) goes with the run.
        Bookkeeping: a fault is logged (a later run lists afresh anyway)."""
        from ...staging.run_listing import forget
        try:
            if forget(self.workdir, self.mous_uid, run_id):
                self.log.info("the run's archive listing removed")
        except Exception as exc:  # noqa: BLE001
            self.log.warning("could not remove the run's archive listing: %s", exc)

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
