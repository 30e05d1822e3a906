"""Hooks for the two archive sources: the request handler (HTTP) and the S3 mirror.

Connections (never literals in code):
  `alma_request_handler` (HTTP): host (with or without scheme), port, schema (http/https),
      login/password for basic auth, extra {"cookie": "<login cookie>", "timeout": 60}.
  `alma_archive_s3` (AWS): the amazon provider's usual fields (login/password or role,
      extra endpoint_url/region_name), plus extra {"archive_url": "s3://bucket/prefix"}.
The hooks only build a `staging.sources` object; the downloading is the library's.
The S3 hook lives in archive_s3.py and is imported only when an S3 source is asked for:
the Amazon provider's S3Hook costs about 0.1 s to import, in every task process that
lists or stages over HTTP otherwise (bench/orchestration.py).
"""
from __future__ import annotations

from airflow.exceptions import AirflowNotFoundException
from airflow.sdk import BaseHook

from ...errors import PermanentError
from ...staging.sources import HttpSource, origin

ARCHIVE_S3_CONN = "alma_archive_s3"


def __getattr__(name):
    if name == "AlmaArchiveS3Hook":  # the old import path of the class
        from .archive_s3 import AlmaArchiveS3Hook
        return AlmaArchiveS3Hook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class AlmaRequestHandlerHook(BaseHook):
    conn_name_attr = "http_conn_id"
    default_conn_name = "alma_request_handler"
    conn_type = "http"
    hook_name = "ALMA request handler"

    def __init__(self, http_conn_id: str = default_conn_name, timeout: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.http_conn_id = http_conn_id
        self.timeout = timeout

    def base_url(self) -> str:
        conn = self.get_connection(self.http_conn_id)
        host = (conn.host or "").rstrip("/")
        if not host:
            raise PermanentError(f"connection {self.http_conn_id!r} has no host")
        url = host if "://" in host else f"{conn.schema or ('https' if conn.conn_type == 'https' else 'http')}://{host}"
        if conn.port and "://" not in host:
            url += f":{conn.port}"
        return url

    def get_source(self, root: str | None = None) -> HttpSource:
        """The request handler at the connection's host, or at `root`.

        The connection's credentials (login/password, cookie) go only to the connection's
        own origin (scheme, host, port): a `root` elsewhere (a DAG param anyone triggering
        the DAG can set) is accessed anonymously, so it cannot collect them.
        """
        conn = self.get_connection(self.http_conn_id)
        extra = conn.extra_dejson
        auth = (conn.login, conn.password or "") if conn.login else None
        cookie = extra.get("cookie", "")
        timeout = self.timeout or float(extra.get("timeout", 60))
        if root and (auth or cookie):
            try:
                home = origin(self.base_url())
            except PermanentError:
                home = None  # a connection without a host scopes its credentials nowhere
            if origin(root) != home:
                self.log.warning("source %s is not the origin of connection %r: staging it without the "
                                 "connection's credentials", root, self.http_conn_id)
                auth, cookie = None, ""
        return HttpSource(root or self.base_url(), auth=auth, cookie=cookie, timeout=timeout)

    def get_conn(self) -> HttpSource:
        return self.get_source()


def archive_s3_client(conn_id: str = ARCHIVE_S3_CONN):
    """The boto3 client of the archive's S3 mirror (a worklist kept there, besides staging)."""
    from .archive_s3 import AlmaArchiveS3Hook
    return AlmaArchiveS3Hook(conn_id).get_conn()


def archive_source(source: str, http_conn_id: str = AlmaRequestHandlerHook.default_conn_name,
                   aws_conn_id: str = ARCHIVE_S3_CONN):
    """The staging source for a DAG's `source` param.

    `request_handler` -> the HTTP connection; `s3` -> the S3 connection's archive_url;
    an explicit `s3://bucket/prefix` -> that place with the S3 connection's credentials;
    an explicit `http(s)://...` -> that root, with the HTTP connection's credentials only when
    it is the connection's own origin (scheme, host, port).
    """
    if source == "request_handler":
        return AlmaRequestHandlerHook(http_conn_id).get_source()
    if source == "s3" or source.startswith("s3://"):
        from .archive_s3 import AlmaArchiveS3Hook
        return AlmaArchiveS3Hook(aws_conn_id).get_source(None if source == "s3" else source)
    if source.startswith(("http://", "https://")):
        try:
            return AlmaRequestHandlerHook(http_conn_id).get_source(root=source)
        except AirflowNotFoundException:  # no such connection: anonymous access to the given root
            return HttpSource(source)
    raise PermanentError(f"unknown source {source!r}: request_handler, s3, s3://bucket/prefix or http(s)://host")
