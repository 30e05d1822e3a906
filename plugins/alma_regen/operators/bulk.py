"""The bulk DAG's operators: decide what to start, then report.

    plan = BulkPlanOperator(task_id="plan", worklist=..., ...)
    TriggerDagRunOperator.partial(task_id="start", trigger_dag_id="alma_regenerate").expand_kwargs(plan.output)
    BulkSummaryOperator(task_id="summary")
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Sequence

from airflow.sdk import BaseOperator


class BulkPlanOperator(BaseOperator):
    """Returns one {"conf", "trigger_run_id"} per alma_regenerate run to start; the
    whole decision (skipped, deferred, why) goes to the XCom key "summary"."""

    template_fields: Sequence[str] = ("worklist", "force", "source")
    ui_color = "#fcf3cf"

    def __init__(self, *, worklist: str, force=False, source: str = "request_handler", settings=None, **kwargs):
        super().__init__(**kwargs)
        self.worklist, self.force, self.source, self.settings = worklist, force, source, settings

    def execute(self, context: Any) -> list:
        from ..bulk import plan_bulk
        from ..config import runtime_settings
        from ..hooks.archive import archive_source
        from ..naming import run_id
        from ..publish import s3_client
        from ..reuse import current_casa
        s = runtime_settings()
        if not self.worklist:
            raise ValueError("no worklist: set ALMA_REGEN_BULK_WORKLIST or the worklist param")
        products = s3_client(s.products_s3_conn) if s.products_url or self.worklist.startswith("s3://") else None
        archive = s3_client(s.archive_s3_conn) if self.worklist.startswith("s3://") else None
        result = plan_bulk(
            self.worklist, source_for=lambda: archive_source(self.source, s.request_handler_conn, s.archive_s3_conn),
            products_url=s.products_url, products_client=products, archive_client=archive,
            casa_version=current_casa(), force_all=str(self.force).lower() in ("true", "1", "yes"),
            workdir=s.workdir, max_runs=s.bulk_max_runs, min_free_gb=s.bulk_min_free_gb)
        context["ti"].xcom_push(key="summary", value=result)
        # Named as every alma_regenerate run (alma_regen.naming.run_id), `bulk__` first; the
        # time is this bulk run's, so a retry of the triggers names the same runs.
        when = getattr(context.get("dag_run"), "run_after", None) or datetime.now(timezone.utc)
        force = str(self.force).lower() in ("true", "1", "yes")
        return [{"conf": {"mous_uid": e["mous_uid"], "source": self.source, "bulk": True, "force": force},
                 "trigger_run_id": run_id(e["mous_uid"], when, prefix="bulk")} for e in result["start"]]


class BulkSummaryOperator(BaseOperator):
    """The bulk run's report: started, skipped, deferred, tried before but unpublished."""

    ui_color = "#fcf3cf"

    def execute(self, context: Any) -> dict:
        s = context["ti"].xcom_pull(task_ids="plan", key="summary") or {}
        report = {k: s.get(k, []) for k in ("start", "skipped", "deferred", "attempted_before_unpublished")}
        self.log.info("bulk reprocessing: %d started, %d skipped, %d deferred, %d tried before and unpublished",
                      len(report["start"]), len(report["skipped"]), len(report["deferred"]),
                      len(report["attempted_before_unpublished"]))
        for kind in ("start", "skipped", "deferred"):
            for e in report[kind]:
                self.log.info("  %-8s %s: %s", kind, e["mous_uid"], e["why"])
        return {k: len(v) for k, v in report.items()}
