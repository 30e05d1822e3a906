"""The deadline's import paths before the Airflow layer moved to alma_regen.airflow.

Kept for one release: DAG versions serialized before the move name the reference
`alma_regen.deadlines.MousSizeDeadline` (Airflow finds it by that name among the
references a plugin registers: the plugin registers this one too) and the callback
`alma_regen.deadlines.run_late` (imported by that path).
"""
from dataclasses import dataclass

from .airflow.deadlines import MousSizeDeadline as _MousSizeDeadline
from .airflow.deadlines import run_late  # noqa: F401


@dataclass(eq=False)
class MousSizeDeadline(_MousSizeDeadline):
    """alma_regen.airflow.deadlines.MousSizeDeadline under its old name."""
