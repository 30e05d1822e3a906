"""The hook of the archive's S3 mirror (`alma_archive_s3`), apart from archive.py so that
only an S3 source pays for importing the Amazon provider's S3Hook.

The connection: the Amazon provider's usual fields (login/password or role, extra
endpoint_url/region_name), plus extra {"archive_url": "s3://bucket/prefix"}.
"""
from __future__ import annotations

from airflow.providers.amazon.aws.hooks.s3 import S3Hook

from ...errors import PermanentError
from ...staging.sources import S3Source


class AlmaArchiveS3Hook(S3Hook):
    default_conn_name = "alma_archive_s3"  # archive.ARCHIVE_S3_CONN (not imported: no import cycle)
    hook_name = "ALMA archive mirror (S3)"

    def __init__(self, aws_conn_id: str = default_conn_name, **kwargs):
        super().__init__(aws_conn_id=aws_conn_id, **kwargs)

    def archive_url(self) -> str:
        url = self.get_connection(self.aws_conn_id).extra_dejson.get("archive_url", "")
        if not url:
            raise PermanentError(f"connection {self.aws_conn_id!r} has no extra 'archive_url' (s3://bucket/prefix)")
        return url

    def get_source(self, url: str | None = None, **kwargs) -> S3Source:
        return S3Source(url or self.archive_url(), self.get_conn(), **kwargs)
