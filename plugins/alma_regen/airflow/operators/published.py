"""Is the MOUS published already, as it would be again? (the run's `force` param)

    CheckPublishedOperator   skips the run (saying why) when the MOUS is published as it would be again
"""
from __future__ import annotations

from typing import Any, Sequence

from .mous import MousOperator, run_listing, truthy


class CheckPublishedOperator(MousOperator):
    """Skip the whole regeneration when the MOUS is already published with the same
    inputs (archive file names and sizes) and CASA, unless forced."""

    template_fields: Sequence[str] = ("mous_uid", "workdir", "source", "force", "products_url")

    def __init__(self, *, source: str, force=False, products_url: str = "", http_conn_id: str,
                 aws_conn_id: str, products_conn_id: str, **kwargs):
        super().__init__(**kwargs)
        self.source, self.force, self.products_url = source, force, products_url
        self.http_conn_id, self.aws_conn_id, self.products_conn_id = http_conn_id, aws_conn_id, products_conn_id

    def execute(self, context: Any) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from ..hooks.archive import archive_source
        from ..hooks.products import s3_client
        from ...products.manifest import latest_manifest
        from ...products.reuse import current_casa, same_as_published
        if truthy(self.force):
            self.log.info("%s: force=true: regenerating without looking at what is published", self.mous_uid)
            return {"reuse": False, "why": "force=True"}
        if not self.products_url:
            self.log.info("%s: no products_url is configured: nothing is published to compare with",
                          self.mous_uid)
            return {"reuse": False, "why": "no products_url: nothing is published"}
        listing = run_listing(self, context, archive_source(self.source, self.http_conn_id, self.aws_conn_id))
        files = {f.name: f.size for f in listing.all_files()}
        manifest = latest_manifest(s3_client(self.products_conn_id), self.products_url, self.mous_uid)
        same, why = same_as_published(manifest, files, current_casa())
        if same:
            msg = (f"{self.mous_uid}: {why}: every later step is skipped; "
                   "trigger again with force=true to regenerate it anyway")
            self.log.info("%s", msg)
            raise AirflowSkipException(msg)
        self.log.info("%s: regenerating: %s (force=true would regenerate even an unchanged MOUS)",
                      self.mous_uid, why)
        return {"reuse": False, "why": why}
