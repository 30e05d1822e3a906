"""Time limits of the staging and CASA tasks, from the size of their data (alma_regen.timeouts).

An Airflow task's `execution_timeout` is an attribute of the task, fixed when
the DAG is parsed, when the size of the MOUS is not known yet. The Task SDK
reads it only after `pre_execute` (task_runner._execute_task ->
_run_execute_callable), so these mixins set it there, from the data the task
is about to work on: the archive's listed sizes for staging, raw/ for CASA.
An `execution_timeout` the DAG author set explicitly is kept.

The CASA runner gets the step limit itself (it kills the child's process group
and says so); execution_timeout is that limit plus a grace (task_bound), the
outer bound for whatever else the task does.
"""
from __future__ import annotations

from datetime import timedelta


def _bound_task(op, step_s: float, what: str) -> None:
    from ...timeouts import task_bound
    if op.execution_timeout is not None and not getattr(op, "_timeout_from_size", False):
        op.log.info("%s: limit %.0f s; execution_timeout %s as the DAG sets it", what, step_s, op.execution_timeout)
        return
    op.execution_timeout = timedelta(seconds=task_bound(step_s))
    op._timeout_from_size = True
    op.log.info("%s: limit %.0f s, execution_timeout %s (from the data size and the settings)",
                what, step_s, op.execution_timeout)


class CasaTimeouts:
    """For operators with a `member` (operators/mous.py): the CASA limit from the raw ASDMs in raw/.

    An explicit `casa_timeout_s` / `timeout_s` of the operator wins."""

    def casa_limit(self) -> float:
        explicit = getattr(self, "casa_timeout_s", None) or getattr(self, "timeout_s", None)
        if explicit:
            return float(explicit)
        if getattr(self, "_casa_limit_s", None) is None:
            from ...config import runtime_settings
            from ...timeouts import casa_timeout
            self._casa_limit_s = casa_timeout(self.member, runtime_settings())
        return self._casa_limit_s

    def pre_execute(self, context) -> None:
        super().pre_execute(context)
        _bound_task(self, self.casa_limit(), "CASA")


class StagingTimeouts:
    """For staging operators: the limit from the archive's sizes of what `_files(listing)` fetches.

    The listing is the run's (operators/mous.run_listing: asked once per DAG run), kept
    (`self._listing`) so the step's work stages against it."""

    def _files(self, listing) -> list:
        raise NotImplementedError

    def pre_execute(self, context) -> None:
        super().pre_execute(context)
        from ...config import runtime_settings
        from ...timeouts import stage_timeout
        from .mous import run_listing
        self._listing = run_listing(self, context, self._source())
        size = sum(int(f.size or 0) for f in self._files(self._listing) if f is not None)
        _bound_task(self, stage_timeout(size, runtime_settings()), f"staging {size} bytes")
