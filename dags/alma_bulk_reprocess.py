"""
# Reprocess a worklist of ALMA MOUSs

A feeder: on its frequent schedule (`bulk_schedule`, every 15 minutes by default, when
a worklist is configured with `ALMA_REGEN_BULK_WORKLIST`; one pass at a time), or when
triggered, it reads the **worklist** and starts one
`alma_regenerate` run per MOUS that needs it and fits now, until the worklist is done:

- a MOUS already published with the same inputs and CASA is **skipped** (unless
  *Force*, or `"force": true` on its worklist entry);
- each run reserves its predicted peak disk (`footprint_factor` x the raw ASDMs the
  archive lists, + the other files) in a ledger every run shares; a MOUS starts, in
  worklist order, only while its reservation fits the disk budget
  (`bulk_disk_budget_gb`; 0: the free disk plus what the runs use, less
  `bulk_min_free_gb`) and fewer than `bulk_max_in_flight` runs are in flight; the rest
  are **deferred** to a later pass, as is a MOUS whose run is in flight;
- a MOUS larger than the whole budget is **too large**: reported, never started;
- the runs it starts are named `bulk__<MOUS>__<time>` (the uid in file form) and
  carry `bulk: true`, so an operator's own reruns go first (they are not held back
  by the budget; their reservations count).

`plan` decides and reserves; `start` triggers the runs (one per MOUS); `summary` logs
every MOUS of the worklist with what was done with it and why.

The worklist is a text file or S3 object with one MOUS uid per line (`#` starts
a comment), or JSON: a list of uids, or of `{"mous_uid": ..., "force": true}`.
"""
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Param

from alma_regen.config import settings
from alma_regen.airflow.alerts import run_failed
from alma_regen.airflow.operators.bulk import BulkPlanOperator, BulkSummaryOperator
from alma_regen.airflow.retries import task_defaults

# Parse time: only the environment. The settings used here are PARSE_TIME ones
# (alma_regen/config.py), which the `alma_regen` Variable does not change anywhere;
# the tasks read the others when they run.
S = settings()

with DAG(
    dag_id="alma_bulk_reprocess",
    description="Start alma_regenerate for a worklist of MOUSs, skipping what is already published",
    # Scheduled only where a worklist is configured: without one every pass would fail.
    schedule=(S.bulk_schedule or None) if S.bulk_worklist else None,
    catchup=False,
    max_active_runs=1,
    default_args={**task_defaults(S), "owner": "alma-regen"},
    on_failure_callback=run_failed,
    params={
        "worklist": Param(S.bulk_worklist, type="string", title="Worklist",
                          description="Where the worklist is: a file path on the workers, or s3://bucket/key. "
                                      "One MOUS uid per line (uid://A001/X1296/X133), or JSON."),
        "force": Param(False, type="boolean", title="Force",
                       description="Regenerate even the MOUSs already published with the same inputs and CASA."),
        "source": Param("request_handler", enum=["request_handler", "s3"], title="Raw data from",
                        description="Where the started runs take the raw data from, and where this DAG asks "
                                    "which files each MOUS has: request_handler, the ALMA archive's request "
                                    "handler over HTTP (connection alma_request_handler); s3, the S3 mirror of "
                                    "the archive (connection alma_archive_s3)."),
    },
    tags=["alma", "bulk"],
    doc_md=__doc__,
) as dag:
    plan = BulkPlanOperator(task_id="plan", worklist="{{ params.worklist }}", force="{{ params.force }}",
                            source="{{ params.source }}",
                            doc_md="Reads the worklist and decides, per MOUS: start (and reserve its disk), "
                                   "skip (published as it would be again), defer (in flight, in-flight cap, "
                                   "disk budget) or too large (never fits the budget); the log says why for each.")
    start = TriggerDagRunOperator.partial(task_id="start", trigger_dag_id="alma_regenerate",
                                          wait_for_completion=False, map_index_template="{{ task.trigger_run_id }}",
                                          doc_md="Starts one alma_regenerate run per MOUS to start; skipped when "
                                                 "there is none (every MOUS published or deferred: see summary)."
                                          ).expand_kwargs(plan.output)
    summary = BulkSummaryOperator(task_id="summary", trigger_rule="all_done",
                                  doc_md="Every MOUS of the worklist: started, skipped, deferred or too large, "
                                         "and why.")
    plan >> start >> summary
