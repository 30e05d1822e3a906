"""Retries that know a transient fault from a permanent one.

Every library error is an `alma_regen.errors.TransientError` (network, 5xx,
S3 throttling, a killed CASA child) or a `PermanentError` (bad input, checksum
mismatch after a clean re-download, missing CASA version, no space). The
policy retries the first with the task's exponential backoff and fails the
second at once, with the reason in the task log.
"""
from datetime import timedelta

from airflow.sdk import ExceptionRetryPolicy
from airflow.sdk.definitions.retry_policy import RetryAction, RetryRule

from ..config import Settings

TRANSIENT = [
    "alma_regen.errors.TransientError",
    "builtins.ConnectionError",
    "builtins.TimeoutError",
    "botocore.exceptions.EndpointConnectionError",
    "botocore.exceptions.ConnectionClosedError",
]
PERMANENT = ["alma_regen.errors.PermanentError"]


def retry_policy() -> ExceptionRetryPolicy:
    return ExceptionRetryPolicy(rules=[
        RetryRule(exception=PERMANENT, action=RetryAction.FAIL,
                  reason="permanent: retrying cannot help (bad input, missing CASA, no space, ...)"),
        RetryRule(exception=TRANSIENT, action=RetryAction.RETRY, reason="transient fault: retrying"),
    ])


def task_defaults(s: Settings) -> dict:
    """default_args of every alma-regen task."""
    return {
        "retries": s.retries,
        "retry_delay": timedelta(seconds=s.retry_delay_s),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(seconds=s.max_retry_delay_s),
        "retry_policy": retry_policy(),
        # No execution_timeout here: it would be fixed at parse time, before the size of
        # the MOUS is known. The staging and CASA operators set theirs in pre_execute from
        # the data size and stage/casa_timeout_s_per_gb, min_timeout_s (operators/timeouts.py).
        # Registered by the plugin; named by path so DAG files need not import it.
        "weight_rule": "alma_regen.airflow.priority.OperatorRunsFirst",
    }
