"""The bulk DAG's operators: decide what to start, then report.

    plan = BulkPlanOperator(task_id="plan", worklist=..., ...)
    TriggerDagRunOperator.partial(task_id="start", trigger_dag_id="alma_regenerate").expand_kwargs(plan.output)
    BulkSummaryOperator(task_id="summary")
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Sequence

from airflow.sdk import BaseOperator

from .mous import truthy


REGEN_DAG_ID = "alma_regenerate"


def _regen_state(run_id: str):
    """The state of an alma_regenerate run through the Task SDK: its state, "missing" when
    Airflow has no such run, None when it cannot tell (admission.forget_stale's contract)."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    from .lock import state_of
    state = state_of(REGEN_DAG_ID, run_id)
    if state is not None:
        return state
    try:  # no such run, or no answer: told apart here
        if RuntimeTaskInstance.get_dr_count(dag_id=REGEN_DAG_ID, run_ids=[run_id]) == 0:
            return "missing"
    except Exception:  # noqa: BLE001 - Airflow is not answering: keep the reservation for now
        pass
    return None


class BulkPlanOperator(BaseOperator):
    """Returns one {"conf", "trigger_run_id"} per alma_regenerate run to start; the
    whole decision (skipped, deferred, why) goes to the XCom key "summary"."""

    template_fields: Sequence[str] = ("worklist", "force", "source")
    ui_color = "#fcf3cf"

    def __init__(self, *, worklist: str, force=False, source: str = "request_handler", settings=None, **kwargs):
        super().__init__(**kwargs)
        self.worklist, self.force, self.source, self.settings = worklist, force, source, settings

    def execute(self, context: Any) -> list:
        from ...admission import forget_stale
        from ...bulk import plan_bulk
        from ...config import runtime_settings
        from ..hooks.archive import archive_s3_client, archive_source
        from ...naming import run_id
        from ..hooks.products import s3_client
        from ...products.reuse import current_casa
        s = runtime_settings()
        if not self.worklist:
            raise ValueError("no worklist: set ALMA_REGEN_BULK_WORKLIST or the worklist param")
        products = s3_client(s.products_s3_conn) if s.products_url or self.worklist.startswith("s3://") else None
        archive = archive_s3_client(s.archive_s3_conn) if self.worklist.startswith("s3://") else None
        # Runs that ended without their teardown (killed, marked failed) still hold disk in the
        # ledger: forget them first, asking Airflow (the Task SDK) for each run's state.
        forget_stale(s.workdir, lambda run: _regen_state(run))
        # Named as every alma_regenerate run (alma_regen.naming.run_id), `bulk__` first; the
        # time is this bulk run's, so a retry of the plan or the triggers names the same runs
        # (and finds their reservations already made).
        when = getattr(context.get("dag_run"), "run_after", None) or datetime.now(timezone.utc)
        force = truthy(self.force)
        result = plan_bulk(
            self.worklist, source_for=lambda: archive_source(self.source, s.request_handler_conn, s.archive_s3_conn),
            products_url=s.products_url, products_client=products, archive_client=archive,
            casa_version=current_casa(), force_all=force,
            workdir=s.workdir, run_id_for=lambda mous: run_id(mous, when, prefix="bulk"),
            budget_gb=s.bulk_disk_budget_gb, min_free_gb=s.bulk_min_free_gb,
            max_in_flight=s.bulk_max_in_flight, footprint_factor=s.footprint_factor,
            listing_ttl_s=s.bulk_listing_ttl_h * 3600)
        context["ti"].xcom_push(key="summary", value=result)
        return [{"conf": {"mous_uid": e["mous_uid"], "source": self.source, "bulk": True, "force": force},
                 "trigger_run_id": e["run_id"]} for e in result["start"]]


class BulkSummaryOperator(BaseOperator):
    """The bulk run's report: started, skipped, deferred, too large for the disk budget,
    tried before but unpublished."""

    ui_color = "#fcf3cf"

    def execute(self, context: Any) -> dict:
        s = context["ti"].xcom_pull(task_ids="plan", key="summary") or {}
        report = {k: s.get(k, []) for k in ("start", "skipped", "deferred", "parked", "too_large",
                                            "attempted_before_unpublished")}
        self.log.info("bulk reprocessing: %d started, %d skipped, %d deferred, %d parked (failed again and again; "
                      "started only when forced), %d too large for the disk budget (never attempted), %d tried "
                      "before and unpublished",
                      len(report["start"]), len(report["skipped"]), len(report["deferred"]), len(report["parked"]),
                      len(report["too_large"]), len(report["attempted_before_unpublished"]))
        if s:
            self.log.info("disk budget %s GB, %s GB reserved by %s runs in flight before the plan",
                          s.get("budget_gb"), s.get("reserved_gb"), s.get("in_flight"))
        for kind in ("start", "skipped", "deferred", "parked", "too_large"):
            for e in report[kind]:
                self.log.info("  %-9s %s: %s", kind, e["mous_uid"], e["why"])
        return {k: len(v) for k, v in report.items()}
