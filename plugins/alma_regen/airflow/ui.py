"""UI monitoring: operator extra links and the "Reprocessing" view.

Links (computed in the task's process when it ends, stored by Airflow as XCom):
  SummaryPageLink  -> <path>/alma-regen/products/<MOUS>/<run>/index.html
  ManifestLink     -> <path>/alma-regen/products/<MOUS>/<run>/manifest.json
where <run> is the publish run id of the DAG run (what PublishOperator uses) and
<path> the path of `api.base_url` (empty when the UI is served at the root).
The links carry no scheme or host: the browser resolves them against the host
the UI was opened on (localhost, 127.0.0.1, a proxy's name), where the UI's
login cookie is; an absolute URL from `api.base_url` worked on that host only.
The view's /products/ route streams those objects from the products bucket
(connection `alma_products_s3`), so the bucket needs no public access.

The view (a FastAPI app mounted by the api-server under /alma-regen):
  GET /             HTML table: one row per MOUS, its latest alma_regenerate run
  GET /api/mous     the same as JSON
  GET /products/<MOUS>/<run>/<path>   a published object (index.html, manifest.json, FITS, ...)
Read from Airflow's own database (DagRuns, TaskInstances, XComs of alma_regenerate)
and the manifests in S3 (latest.json): no second database.
"""
from __future__ import annotations

import os
from pathlib import PurePath

from airflow.sdk import BaseOperatorLink

VIEW_PREFIX = "/alma-regen"
DAG_ID = "alma_regenerate"


def publish_run_id(run_id: str) -> str:
    """The run id PublishOperator publishes a DAG run under (the same function it calls)."""
    from ..s3 import run_folder
    return run_folder(run_id)


def ui_path() -> str:
    """The path part of `api.base_url` ("" at the root, "/airflow" behind a proxy's subpath)."""
    from urllib.parse import urlsplit
    base = os.environ.get("AIRFLOW__API__BASE_URL", "")
    if not base:
        try:
            from airflow.configuration import conf
            base = conf.get("api", "base_url", fallback="") or ""
        except Exception:  # noqa: BLE001
            base = ""
    return urlsplit(base).path.rstrip("/")


def view_base() -> str:
    """Where the view is, relative to the host the UI is opened on (no scheme, no host)."""
    return ui_path() + VIEW_PREFIX


def products_url(mous_uid: str, run: str, name: str) -> str:
    from ..naming import uid_to_file
    return f"{view_base()}/products/{uid_to_file(mous_uid)}/{run}/{name}"


def _mous_of(operator, ti_key) -> str | None:
    """The MOUS of the task: its `mous_uid` (rendered by the time the links are made), else read
    from the name of its member folder (member.uid___...) by the one parser of that name."""
    from ..naming import FILE_UID_RE, UID_RE, file_to_uid, mous_of_member_dir
    uid = str(getattr(operator, "mous_uid", "") or "")
    if UID_RE.match(uid) or FILE_UID_RE.match(uid):
        return file_to_uid(uid)
    member = getattr(operator, "member_dir", None)
    return mous_of_member_dir(PurePath(str(member)).name) if member else None


class _ProductsLink(BaseOperatorLink):
    target = "index.html"

    def get_link(self, operator, *, ti_key) -> str:
        mous = _mous_of(operator, ti_key)
        if not mous:
            return ""
        return products_url(mous, publish_run_id(ti_key.run_id), self.target)


class SummaryPageLink(_ProductsLink):
    name = "Products summary"
    target = "index.html"


class ManifestLink(_ProductsLink):
    name = "Products manifest"
    target = "manifest.json"
