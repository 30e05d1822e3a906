"""Thin calibration operators: parameters, `template_fields`, one library call each.

    prep = PrepareCalibrationOperator(task_id="prepare_calibration", mous_uid=..., workdir=..., ...)
    RestoreEbOperator.partial(task_id="restore_eb", mous_uid=..., ...).expand(eb_uid=prep.output["map_ebs"])
    FinishCalibrationOperator(task_id="finish_calibration", mous_uid=..., workdir=..., ...)

The native restore maps per EB across workers; the other engines (scriptForPI,
the full pipeline, manual scripts) cannot be split, so `map_ebs` is empty for
them and the finishing step runs them whole. The plan (engine, CASA, EBs, split) is
made once, by the prepare step, and read by the others. CASA runs in a child process;
`on_kill` stops its whole process group.
"""
from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk import BaseOperator

from .mous import MousFields, truthy
from .timeouts import CasaTimeouts

CAL_FIELDS = ("mous_uid", "workdir", "engine", "casa_version", "dosplit", "spacesaving", "docontsub")


class _CalibrationBase(CasaTimeouts, MousFields, BaseOperator):
    template_fields: Sequence[str] = CAL_FIELDS
    ui_color = "#fdebd0"

    def __init__(self, *, mous_uid: str | None = None, workdir: str | None = None, member_dir: str | None = None,
                 engine: str = "auto", casa_version: str = "", dosplit=False, spacesaving=1, docontsub=False,
                 casa_timeout_s: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self._set_mous(mous_uid, workdir, member_dir)
        self.engine, self.casa_version = engine, casa_version
        self.dosplit, self.spacesaving, self.docontsub = dosplit, spacesaving, docontsub
        self.casa_timeout_s = casa_timeout_s
        self._runner = None

    def _options(self):
        from ...calibration import Options
        return Options(engine=self.engine, casa_version=self.casa_version or None,
                       dosplit=truthy(self.dosplit), spacesaving=self.spacesaving,
                       docontsub=truthy(self.docontsub), timeout_s=self.casa_limit())

    def _casa_runner(self):
        from ...casa.runner import CasaRunner
        self._runner = CasaRunner(self.log)
        return self._runner

    def on_kill(self) -> None:
        if self._runner is not None:
            self._runner.kill()


class PrepareCalibrationOperator(_CalibrationBase):
    """Plan (engine, CASA, why), check the disk, lay out calibrated/.

    Returns the EBs to restore one by one (what the mapped restore expands
    over): all of them for the native engine, none for engines that run whole.
    The plan is saved in the member folder (calibration.save_plan): the mapped
    restores and the finish read it, never plan again; it also goes to the XCom
    key "plan" for a reader of the run."""

    def execute(self, context: Any) -> list:
        from ...calibration import prepare
        p = prepare(self.member, self._options(), context["run_id"])
        self.log.info("calibration plan: engine %s (%s); CASA %s (%s)", p.engine, p.reason,
                      p.resolution.launcher.describe(), p.resolution.reason)
        context["ti"].xcom_push(key="plan", value=p.as_dict())
        if p.engine != "native":  # restore_eb maps over nothing and shows "skipped": say why here
            self.log.info("restore_eb will be skipped: engine %s runs whole, in finish_calibration", p.engine)
        return p.ebs if p.engine == "native" else []


class RestoreEbOperator(_CalibrationBase):
    """Native restore of one EB (mapped); returns its small record."""

    template_fields: Sequence[str] = CAL_FIELDS + ("eb_uid",)

    def __init__(self, *, eb_uid: str, **kwargs):
        super().__init__(**kwargs)
        self.eb_uid = eb_uid

    def execute(self, context: Any) -> dict:
        from ...calibration import load_plan, restore_eb
        member = self.member
        p = load_plan(member, self._options(), context["run_id"])
        rec = restore_eb(member, self.eb_uid, split=p.split, resolution=p.resolution,
                         runner=self._casa_runner(), timeout_s=self.casa_limit(), split_rule=p.split_rule,
                         parang=p.parang)
        return {k: rec[k] for k in ("eb", "output", "flag_fraction", "duration_s", "max_rss_mb")}


class FinishCalibrationOperator(_CalibrationBase):
    """Gather the EBs (or run an engine that cannot be mapped), ImagingPrep,
    SPACESAVING, calibration.json; returns a summary small enough for XCom."""

    def execute(self, context: Any) -> dict:
        from ...calibration import finish_mapped
        s = finish_mapped(self.member, self._options(), context["run_id"], runner=self._casa_runner())
        return {"engine": s["plan"]["engine"], "casa": s["plan"]["casa"]["casa"]["version"],
                "outputs": [r["output"] for r in s["ebs"]], "elapsed_s": s["elapsed_s"]}
