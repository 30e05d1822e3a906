"""The weight rule's import path before the Airflow layer moved to alma_regen.airflow.

Kept for one release: DAG versions serialized before the move (and the runs that still
use them) name `alma_regen.priority.OperatorRunsFirst`, and Airflow finds a weight rule
by that name among the ones a plugin registers. The plugin registers this one too.
"""
from .airflow.priority import OPERATOR_BONUS  # noqa: F401
from .airflow.priority import OperatorRunsFirst as _OperatorRunsFirst


class OperatorRunsFirst(_OperatorRunsFirst):
    """alma_regen.airflow.priority.OperatorRunsFirst under its old name."""
