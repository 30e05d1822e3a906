"""alma_bulk_reprocess: regenerate a worklist of MOUSs, on a schedule.

Reads the worklist (a file or an S3 object), skips the MOUSs already published
with the same inputs and CASA (unless forced), and starts alma_regenerate runs
for the rest: a bounded number per bulk run, only while the working disk has
room. The started runs carry `bulk: true`, so an operator's reruns go first.
"""
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Param

from alma_regen.config import settings
from alma_regen.notify import run_failed
from alma_regen.operators.bulk import BulkPlanOperator, BulkSummaryOperator
from alma_regen.retries import task_defaults

S = settings()

with DAG(
    dag_id="alma_bulk_reprocess",
    description="Start alma_regenerate for a worklist of MOUSs, skipping what is already published",
    schedule=S.bulk_schedule or None,
    catchup=False,
    max_active_runs=1,
    default_args=task_defaults(S),
    on_failure_callback=run_failed,
    params={
        "worklist": Param(S.bulk_worklist, type="string", title="Worklist",
                          description="A file path or s3://bucket/key: one MOUS uid per line, or JSON."),
        "force": Param(False, type="boolean", title="Force",
                       description="Regenerate even the MOUSs already published with the same inputs."),
        "source": Param("request_handler", enum=["request_handler", "s3"], title="Raw data from"),
    },
    tags=["alma", "bulk"],
    doc_md=__doc__,
) as dag:
    plan = BulkPlanOperator(task_id="plan", worklist="{{ params.worklist }}", force="{{ params.force }}",
                            source="{{ params.source }}")
    start = TriggerDagRunOperator.partial(task_id="start", trigger_dag_id="alma_regenerate",
                                          wait_for_completion=False).expand_kwargs(plan.output)
    summary = BulkSummaryOperator(task_id="summary", trigger_rule="all_done")
    plan >> start >> summary
