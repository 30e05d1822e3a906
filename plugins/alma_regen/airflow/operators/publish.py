"""The thin publishing operator: one call to `alma_regen.products.publish.publish`, then an Asset event.

    PublishOperator(task_id="publish", mous_uid=..., workdir=..., to="s3://alma-products/regen")

The run id defaults to the DAG run's id (made safe for a key), so a retry of
the same DAG run resumes the same, unpublished set; once its manifest exists
the run is never written again. On success the task emits an Asset event
through the `alma_regen_products` alias: one Asset per MOUS,
`s3://<bucket>/<prefix>/<MOUS>/`, with the run and manifest as the event's extra.

Then the working space: with keep `raw` or `nothing` (the DAG param `keep`, else
the setting `workspace_keep`; alma_regen.workspace) the member folder is cleaned
once the manifest shows every object verified, while this DAG run still holds
the MOUS lock (release_mous comes after). What was removed and the bytes freed
are logged in one line and returned under "workspace". A failed cleaning never
fails the task: the products are published, and a retry would be refused.
"""
from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk import Asset, AssetAlias, BaseOperator

from ..ui import ManifestLink, SummaryPageLink
from .mous import MousFields, truthy

PRODUCTS_ALIAS = "alma_regen_products"


def mous_asset(to: str, mous_uid: str) -> Asset:
    """The Asset of a MOUS's published products (what downstream DAGs schedule on)."""
    from ... import s3
    from ...naming import uid_to_file
    bucket, prefix = s3.parse_s3_url(to)
    mous_f = uid_to_file(mous_uid)
    path = s3.key(prefix, mous_f)
    return Asset(uri=f"s3://{bucket}/{path}/", name=f"alma_products_{mous_f}", group="alma-regen")


class PublishOperator(MousFields, BaseOperator):
    template_fields: Sequence[str] = ("mous_uid", "workdir", "to", "run", "enabled")
    ui_color = "#d5f5e3"
    operator_extra_links = (SummaryPageLink(), ManifestLink())  # the UI's links to the products

    def __init__(self, *, to: str, mous_uid: str | None = None, workdir: str | None = None,
                 member_dir: str | None = None, run: str | None = None, include_ms: bool = False,
                 aws_conn_id: str = "alma_products_s3", workers: int = 8, enabled=True, **kwargs):
        kwargs.setdefault("outlets", [AssetAlias(PRODUCTS_ALIAS)])
        super().__init__(**kwargs)
        self._set_mous(mous_uid, workdir, member_dir)
        self.to, self.run = to, run
        self.include_ms, self.aws_conn_id, self.workers = include_ms, aws_conn_id, workers
        self.enabled = enabled

    def execute(self, context: Any) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from ...products.publish import publish
        from ...s3 import run_folder
        from ..hooks.products import s3_client
        if not truthy(self.enabled, default=True):
            raise AirflowSkipException("not published: the run was triggered with publish=false; "
                                       "the products stay in the working folder")
        if not self.to:
            raise AirflowSkipException("not published: no products bucket is configured (products_url); "
                                       "the working space is kept")
        keep = self._keep(context)  # before any upload: a bad setting fails here, not after publishing
        run = self.run or run_folder(context.get("run_id")) or None
        # What the operator asked for goes into the manifest with what ran (the DAG's params).
        params = context.get("params") or {}
        requested = {k: params[k] for k in ("calibration", "imaging") if params.get(k)}
        manifest = publish(self.member, self.to, run=run, include_ms=self.include_ms, workers=self.workers,
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
        extra["workspace"] = self._clean(context, keep, manifest)
        return extra

    @staticmethod
    def _keep(context) -> str:
        """The DAG param `keep`, else (`setting`, empty) the runtime setting workspace_keep."""
        from ...workspace import check_keep
        chosen = (context.get("params") or {}).get("keep")
        if chosen in (None, "", "setting"):
            from ...config import runtime_settings
            chosen = runtime_settings().workspace_keep
        return check_keep(chosen)

    def _clean(self, context, keep: str, manifest: dict) -> dict:
        from ...errors import AlmaRegenError
        from ...workspace import clean, plan_clean, summary
        if keep == "all":
            self.log.info("working space kept (keep=all): %s", self.member)
            return {"keep": "all", "removed": [], "bytes_freed": 0}
        run = context.get("dag_run")
        try:
            if run is None:
                raise AlmaRegenError("no DAG run in the context: cannot tell whether this run holds the MOUS lock")
            result = clean(plan_clean(self.member, keep), manifest=manifest, holder=(run.dag_id, run.run_id))
        except (AlmaRegenError, OSError) as exc:
            self.log.warning("working space NOT cleaned (keep=%s): %s", keep, exc)
            return {"keep": keep, "removed": [], "bytes_freed": 0, "error": str(exc)}
        self.log.info("%s", summary(result, self.member))
        self._after_clean(run, result)
        return result

    def _after_clean(self, run, result: dict) -> None:
        """The run's disk reservation down to what its member folder still holds (the feeder
        can admit the next run now, not at the teardown); with keep=raw, the raw cache back
        under its quota. Bookkeeping: faults are logged."""
        from ... import admission, workspace
        from ...config import runtime_settings
        member = self.member
        try:
            left = 0 if result.get("whole_folder") or not member.root.exists() else admission.usage(member.root)
            now = admission.shrink(member.workdir, run.run_id, left)
            if now is not None:
                self.log.info("disk reservation now %.2f GB (what the member folder still holds)", now / admission.GB)
            quota = runtime_settings().raw_cache_gb
            if result.get("keep") == "raw" and quota > 0:
                for c in workspace.evict(member.workdir, int(quota * admission.GB)):
                    self.log.info("raw cache over its %g GB quota: removed %s (least recently used)", quota, c.member)
        except Exception as exc:  # noqa: BLE001
            self.log.warning("after cleaning: %s", exc)
