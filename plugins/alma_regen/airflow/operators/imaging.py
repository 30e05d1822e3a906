"""Thin imaging operators: parameters, `template_fields`, one library call each.

As alma_regenerate uses them: the plan once, the native units mapped per target and
spw, the rest of the engine's work, then the comparison with the delivered images:
    units = PlanImagingOperator(task_id="plan_imaging", mous_uid=..., workdir=..., engine="auto")
    NativeImagingUnitOperator.partial(task_id="image_unit", mous_uid=..., workdir=...).expand(unit=units.output)
    FinishImagingOperator(task_id="finish_imaging", mous_uid=..., workdir=...)
    FidelityOperator(task_id="fidelity", mous_uid=..., workdir=...)

Errors are the library's (PermanentError: fail now; TransientError: retry).
on_kill stops every CASA child the task started, with its process group.
"""
from __future__ import annotations

import threading
from typing import Any, Sequence

from airflow.sdk import BaseOperator

from ..ui import ManifestLink, SummaryPageLink
from .mous import MousFields
from .timeouts import CasaTimeouts

MOUS_FIELDS = ("mous_uid", "workdir")


class _CasaTask(CasaTimeouts, MousFields, BaseOperator):
    template_fields: Sequence[str] = MOUS_FIELDS
    ui_color = "#e8daef"

    def __init__(self, *, mous_uid: str | None = None, workdir: str | None = None, member_dir: str | None = None,
                 timeout_s: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self._set_mous(mous_uid, workdir, member_dir)
        self.timeout_s = timeout_s
        self._runners, self._lock = [], threading.Lock()

    def _runner(self):
        from ...casa.runner import CasaRunner
        r = CasaRunner(self.log)
        with self._lock:
            self._runners.append(r)
        return r

    def on_kill(self) -> None:
        with self._lock:
            runners = list(self._runners)
        for r in runners:
            r.kill()


class NativeImagingUnitsOperator(_CasaTask):
    """Start a native imaging run; return its work units (one per target and spw) to map over."""

    def execute(self, context: Any) -> list:
        from ...imaging import native_units
        return native_units(self.member, runner=self._runner(), timeout=self.casa_limit())


class NativeImagingUnitOperator(_CasaTask):
    """One native work unit (continuum + cube of one target and spw)."""

    template_fields: Sequence[str] = MOUS_FIELDS + ("unit",)

    def __init__(self, *, unit: dict, **kwargs):
        super().__init__(**kwargs)
        self.unit = unit

    def execute(self, context: Any) -> dict:
        from ...imaging import run_native_unit
        result = run_native_unit(self.member, self.unit, runner=self._runner(), timeout=self.casa_limit())
        return {"unit": result["unit"], "fits": [f for i in result["images"] for f in i["fits"].values()]}


class FidelityOperator(_CasaTask):
    """Compare the regenerated images with product/; fails (PermanentError) on a bad match."""

    template_fields: Sequence[str] = MOUS_FIELDS

    def __init__(self, *, tolerances: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.tolerances = tolerances

    def execute(self, context: Any) -> dict:
        from ...fidelity import check_fidelity
        doc = check_fidelity(self.member, self.tolerances, runner=self._runner(), timeout=self.casa_limit())
        return {"ok": doc["ok"], "summary": doc["summary"]}


class PlanImagingOperator(_CasaTask):
    """Choose the engine; return the native work units to map over (none for
    script/pipeline/none, which FinishImagingOperator runs whole)."""

    template_fields: Sequence[str] = MOUS_FIELDS + ("engine",)

    def __init__(self, *, engine: str = "auto", **kwargs):
        super().__init__(**kwargs)
        self.engine = engine

    def execute(self, context: Any) -> list:
        from ...imaging import plan_mapped
        units = plan_mapped(self.member, self.engine, runner=self._runner(), timeout=self.casa_limit())
        if not units:  # image_unit maps over nothing and shows "skipped": say why here
            self.log.info("image_unit will be skipped: %s", "imaging=none, no images asked for"
                          if self.engine == "none" else "this engine runs whole, in finish_imaging")
        return units


class FinishImagingOperator(PlanImagingOperator):
    """Gather the mapped units, or run an engine that cannot be split; skipped for `none`."""

    operator_extra_links = (SummaryPageLink(), ManifestLink())  # where the images get published

    def execute(self, context: Any) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from ...imaging import finish_mapped
        record = finish_mapped(self.member, self.engine, runner_factory=self._runner, timeout=self.casa_limit())
        if record is None:
            raise AirflowSkipException("imaging=none: no images asked for (the calibrated MSs are the products)")
        return {"engine": record["engine"], "products": record["products"]}
