"""The thin publishing operator: one call to `alma_regen.publish.publish`, then an Asset event.

    PublishOperator(task_id="publish", member_dir=..., to="s3://alma-products/regen")

The run id defaults to the DAG run's id (made safe for a key), so a retry of
the same DAG run resumes the same, unpublished set; once its manifest exists
the run is never written again. On success the task emits an Asset event
through the `alma_regen_products` alias: one Asset per MOUS,
`s3://<bucket>/<prefix>/<MOUS>/`, with the run and manifest as the event's extra.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

from airflow.sdk import Asset, AssetAlias, BaseOperator

from ..ui import ManifestLink, SummaryPageLink

PRODUCTS_ALIAS = "alma_regen_products"


def mous_asset(to: str, mous_uid: str) -> Asset:
    """The Asset of a MOUS's published products (what downstream DAGs schedule on)."""
    from ..naming import uid_to_file
    from ..publish import parse_s3_url
    bucket, prefix = parse_s3_url(to)
    mous_f = uid_to_file(mous_uid)
    path = "/".join(x for x in (prefix, mous_f) if x)
    return Asset(uri=f"s3://{bucket}/{path}/", name=f"alma_products_{mous_f}", group="alma-regen")


class PublishOperator(BaseOperator):
    template_fields: Sequence[str] = ("member_dir", "to", "run", "enabled")
    ui_color = "#d5f5e3"
    operator_extra_links = (SummaryPageLink(), ManifestLink())  # the UI's links to the products

    def __init__(self, *, member_dir: str, to: str, run: str | None = None, include_ms: bool = False,
                 aws_conn_id: str = "alma_products_s3", workers: int = 8, enabled=True, **kwargs):
        kwargs.setdefault("outlets", [AssetAlias(PRODUCTS_ALIAS)])
        super().__init__(**kwargs)
        self.member_dir, self.to, self.run = member_dir, to, run
        self.include_ms, self.aws_conn_id, self.workers = include_ms, aws_conn_id, workers
        self.enabled = enabled

    def execute(self, context: Any) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from ..publish import publish, s3_client
        if str(self.enabled).strip().lower() in ("false", "0", "no", "off"):
            raise AirflowSkipException("not published: the run was triggered with publish=false; "
                                       "the products stay in the working folder")
        if not self.to:
            raise AirflowSkipException("not published: no products bucket is configured (products_url)")
        run = self.run or re.sub(r"[^A-Za-z0-9._-]", "_", str(context.get("run_id") or "")).strip("_.-") or None
        # What the operator asked for goes into the manifest with what ran (the DAG's params).
        params = context.get("params") or {}
        requested = {k: params[k] for k in ("calibration", "imaging") if params.get(k)}
        manifest = publish(self.member_dir, self.to, run=run, include_ms=self.include_ms, workers=self.workers,
                           client=s3_client(self.aws_conn_id), requested=requested or None,
                           # the DAG run owns its run id: a retry of this task resumes its own claim
                           owner=f"airflow:{getattr(context.get('dag_run'), 'dag_id', '?')}/{context.get('run_id')}")
        asset = mous_asset(self.to, manifest["mous_uid"])
        extra = {"mous_uid": manifest["mous_uid"], "run": manifest["run"],
                 "manifest": manifest["location"] + "manifest.json",
                 "fidelity_ok": (manifest["fidelity"] or {}).get("ok")}
        events = context.get("outlet_events")
        if events is not None:
            events[AssetAlias(PRODUCTS_ALIAS)].add(asset, extra=extra)
        self.log.info("published %s (%d objects); asset event for %s", manifest["location"],
                      len(manifest["outputs"]), asset.uri)
        return extra
