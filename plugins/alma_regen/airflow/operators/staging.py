"""Thin staging operators: parameters, `template_fields`, and one library call each.

    aux = StageAuxiliaryOperator(task_id="stage_auxiliary", mous_uid="{{ params.mous_uid }}", ...)
    StageAsdmOperator.partial(task_id="stage_asdm", mous_uid=..., workdir=..., source=...) \\
        .expand(eb_uid=aux.output)

StageAuxiliaryOperator stages README, auxiliary and product tars and returns the EB uids
to stage (the PPR's, each checked against the source): the list the per-EB task maps
over. Errors are the library's: TransientError (retry) or PermanentError (fail now),
for the DAG's retry policy to tell apart.
"""
from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk import BaseOperator

from .mous import truthy
from .timeouts import StagingTimeouts


class _StagingBase(StagingTimeouts, BaseOperator):
    template_fields: Sequence[str] = ("mous_uid", "workdir", "source")
    ui_color = "#d6eaf8"

    def __init__(self, *, mous_uid: str, workdir: str, source: str = "request_handler",
                 http_conn_id: str = "alma_request_handler", aws_conn_id: str = "alma_archive_s3",
                 parallel: int = 2, lock_timeout: float = 3600.0, **kwargs):
        super().__init__(**kwargs)
        self.mous_uid, self.workdir, self.source = mous_uid, workdir, source
        self.http_conn_id, self.aws_conn_id = http_conn_id, aws_conn_id
        self.parallel, self.lock_timeout = parallel, lock_timeout

    def _source(self):
        """The archive source of the rendered `source` param, made once per task (a connection
        read through the Task SDK is a round trip to the api-server)."""
        from ..hooks.archive import archive_source
        key = (self.source, self.http_conn_id, self.aws_conn_id)
        if getattr(self, "_source_key", None) != key:
            self._source_obj, self._source_key = archive_source(*key), key
        return self._source_obj

    def _options(self):
        from ...config import runtime_settings
        from ...staging import StageOptions
        s = runtime_settings()
        return StageOptions(parallel=self.parallel, lock_timeout=self.lock_timeout,
                            min_rate_bps=max(s.stage_min_rate_bps, 0.0),
                            min_rate_window_s=max(s.stage_min_rate_window_s, 1.0))


class StageAuxiliaryOperator(_StagingBase):
    """README + auxiliary + product tars into the member folder; returns the EB uids to stage.

    require_all_ebs (the run's param, templated): a PPR EB the archive lacks fails the task; by
    default it is left out with a warning and the run is partial, as scriptForPI goes on."""

    template_fields: Sequence[str] = (*_StagingBase.template_fields, "require_all_ebs")

    def __init__(self, *, require_all_ebs=False, **kwargs):
        super().__init__(**kwargs)
        self.require_all_ebs = require_all_ebs

    def _options(self):
        from dataclasses import replace
        return replace(super()._options(), require_all_ebs=truthy(self.require_all_ebs))

    def _files(self, listing) -> list:  # the size its time limit follows (operators/timeouts.py)
        return [listing.readme, listing.auxiliary, *listing.products]

    def execute(self, context: Any) -> list:
        from ...staging import stage_auxiliary
        summary = stage_auxiliary(self.mous_uid, self._source(), self.workdir, self._options(),
                                  listing=getattr(self, "_listing", None))
        for f in summary["files"]:
            self.log.info("%s: %s (%d bytes, sha256 %s)", f["file"], f["status"], f["size"], f["sha256"])
        return summary["ebs"]


class StageAsdmOperator(_StagingBase):
    """One EB's raw ASDM into raw/ (mapped per EB); returns its staging summary."""

    template_fields: Sequence[str] = ("mous_uid", "eb_uid", "workdir", "source")

    def __init__(self, *, eb_uid: str, **kwargs):
        super().__init__(**kwargs)
        self.eb_uid = eb_uid

    def execute(self, context: Any) -> dict:
        from ...staging import stage_eb
        return stage_eb(self.mous_uid, self.eb_uid, self._source(), self.workdir, self._options(),
                        listing=getattr(self, "_listing", None))

    def _files(self, listing) -> list:  # the size its time limit follows (operators/timeouts.py)
        return [listing.asdms.get(self.eb_uid)]
