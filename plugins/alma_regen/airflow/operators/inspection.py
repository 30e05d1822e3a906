"""The delivery's plan, before and after staging.

    InspectDeliveryOperator  before the raw data: what will be staged, and the plan (log, small XCom)
    CheckStagedOperator   after staging: the plan again; fails on what is missing or broken
"""
from __future__ import annotations

from typing import Any, Sequence

from ...errors import DeliveryError
from .mous import MousOperator, run_listing, spacesaving_of, truthy


class InspectDeliveryOperator(MousOperator):
    """The plan before the raw data come: what will be staged (each EB and its size in
    the archive), the CASA version, the engines, the disk it will need. A missing
    ASDM is what staging is for, not an error (one the archive lacks is a warning, a partial
    run, unless require_all_ebs); every other problem is (permanent)."""

    template_fields: Sequence[str] = ("mous_uid", "workdir", "source", "require_all_ebs", "spacesaving")

    def __init__(self, *, source: str = "request_handler", http_conn_id: str = "alma_request_handler",
                 aws_conn_id: str = "alma_archive_s3", require_all_ebs=False, spacesaving=1, **kwargs):
        super().__init__(**kwargs)
        self.source, self.http_conn_id, self.aws_conn_id = source, http_conn_id, aws_conn_id
        self.require_all_ebs, self.spacesaving = require_all_ebs, spacesaving

    def _archive_sizes(self, context) -> dict | None:
        """{EB uid: bytes of its ASDM tar} as the archive lists them for this run; None if it cannot say."""
        try:
            from ..hooks.archive import archive_source
            listing = run_listing(self, context, archive_source(self.source, self.http_conn_id, self.aws_conn_id))
            return {eb: f.size for eb, f in listing.asdms.items()}
        except Exception as exc:  # noqa: BLE001 - the sizes only inform; staging reports real faults
            self.log.info("the archive's sizes of the ASDMs are not known (%s): the disk is estimated after staging",
                          exc)
            return None

    def execute(self, context: Any) -> dict:
        from ...delivery import format_plan
        from ...steps import record_step
        member = self.member
        record_step(member.root, self.task_id, context["dag_run"].run_id)
        plan = member.delivery.plan(staged=False, archive_sizes=self._archive_sizes(context),
                                    require_all_ebs=truthy(self.require_all_ebs),
                                    spacesaving=spacesaving_of(self.spacesaving))
        self.log.info("regeneration plan, before staging the raw data:\n%s", format_plan(plan))
        _fail_on_errors(plan)
        return _summary(plan)


class CheckStagedOperator(MousOperator):
    """After staging: the plan again, now with raw/ as staged; fails on any error (permanent).
    A PPR EB the archive lacked is a warning (a partial run) unless require_all_ebs."""

    template_fields: Sequence[str] = ("mous_uid", "workdir", "require_all_ebs", "spacesaving")

    def __init__(self, *, require_all_ebs=False, spacesaving=1, **kwargs):
        super().__init__(**kwargs)
        self.require_all_ebs, self.spacesaving = require_all_ebs, spacesaving

    def execute(self, context: Any) -> dict:
        from ...delivery import format_plan
        plan = self.member.delivery.plan(require_all_ebs=truthy(self.require_all_ebs),
                                         spacesaving=spacesaving_of(self.spacesaving))
        self.log.info("staged; the plan as it now stands:\n%s", format_plan(plan))
        _fail_on_errors(plan)
        return _summary(plan)


def _fail_on_errors(plan: dict):
    errors = [p for p in plan["problems"] if p["severity"] == "error"]
    if errors:
        raise DeliveryError(errors[0]["path"], errors[0]["message"] +
                            (f" (+{len(errors) - 1} more, see the log)" if len(errors) > 1 else ""))


def _summary(plan: dict) -> dict:
    return {
        "mous_uid": plan["mous_uid"], "project": plan["project"],
        "casa_version": plan["casa_version"]["version"],
        "calibration": plan["calibration"]["kind"], "imaging": plan["imaging"]["kind"],
        "split": plan["split"]["needed"], "ebs": plan["ppr"]["ebs"],
        "missing_ebs": plan["raw"].get("missing", []),
        "disk": {"needed_bytes": plan["disk"]["needed_bytes"], "rule": plan["disk"]["rule"]["formula"]},
    }
