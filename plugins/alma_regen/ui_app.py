"""The "Reprocessing" view: a FastAPI app the api-server mounts under /alma-regen.

    GET /                 HTML: one row per MOUS (its latest alma_regenerate run)
    GET /api/mous         the same rows as JSON
    GET /products/<MOUS>/<run>/<path>   a published object, streamed from the products bucket

Everything comes from Airflow's own database (DagRuns, TaskInstances and the
small XComs of alma_regenerate, through the api-server's ORM session) and from
the manifests in S3 (`<MOUS>/latest.json` -> `manifest.json`): no second
database. Every route needs the caller to be allowed to read alma_regenerate's
runs (the api-server's auth manager, the UI's session cookie or a bearer token).
"""
from __future__ import annotations

import html
import json
import logging
import re
from datetime import datetime
from types import SimpleNamespace

from .ui import DAG_ID, VIEW_PREFIX, publish_run_id

log = logging.getLogger(__name__)

MAX_RUNS = 2000
MAX_MOUS = 200
_MOUS_F = re.compile(r"^uid___[A-Za-z0-9]+_[A-Za-z0-9]+_[A-Za-z0-9]+$")
_RUN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PATH = re.compile(r"^[A-Za-z0-9._/-]{1,512}$")
ACTIVE = ("running", "queued", "up_for_retry", "up_for_reschedule", "deferred", "scheduled", "restarting")


# ------------------------------------------------------------------ data
def _seconds(start, end) -> float | None:
    if start is None:
        return None
    if end is None:
        from airflow.utils import timezone
        end = timezone.utcnow()
    return round((end - start).total_seconds(), 1)


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat(timespec="seconds") if dt else None


def _xcom_values(session, run_id: str, task_ids) -> dict:
    from sqlalchemy import select

    from airflow.models.xcom import XComModel
    rows = session.execute(select(XComModel.task_id, XComModel.value).where(
        XComModel.dag_id == DAG_ID, XComModel.run_id == run_id, XComModel.key == "return_value",
        XComModel.map_index < 0, XComModel.task_id.in_(list(task_ids)))).all()
    out = {}
    for task_id, value in rows:
        try:
            out[task_id] = XComModel.deserialize_value(SimpleNamespace(value=value))
        except Exception:  # noqa: BLE001
            out[task_id] = value if not isinstance(value, str) else _maybe_json(value)
    return out


def _maybe_json(v):
    try:
        return json.loads(v)
    except (TypeError, ValueError):
        return v


def run_rows(session) -> list:
    """One row per MOUS: its latest run of alma_regenerate, from Airflow's database."""
    from sqlalchemy import select

    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance

    runs = session.scalars(select(DagRun).where(DagRun.dag_id == DAG_ID)
                           .order_by(DagRun.run_after.desc(), DagRun.id.desc()).limit(MAX_RUNS)).all()
    latest, counts = {}, {}
    for r in runs:
        mous = (r.conf or {}).get("mous_uid")
        if not mous:
            continue
        counts[mous] = counts.get(mous, 0) + 1
        if mous not in latest and len(latest) < MAX_MOUS:
            latest[mous] = r
    by_run = {}
    run_ids = [r.run_id for r in latest.values()]
    for i in range(0, len(run_ids), 100):  # one query per 100 runs, not one per MOUS
        for ti in session.scalars(select(TaskInstance).where(TaskInstance.dag_id == DAG_ID,
                                                             TaskInstance.run_id.in_(run_ids[i:i + 100]))):
            by_run.setdefault(ti.run_id, []).append(ti)
    rows = []
    for mous, r in latest.items():
        tis = by_run.get(r.run_id, [])
        steps = {}
        for ti in tis:
            s = steps.setdefault(ti.task_id, {"task_id": ti.task_id, "states": {}, "start": None, "end": None,
                                              "instances": 0})
            state = str(ti.state.value if hasattr(ti.state, "value") else ti.state or "none")
            s["states"][state] = s["states"].get(state, 0) + 1
            s["instances"] += 1
            if ti.start_date and (s["start"] is None or ti.start_date < s["start"]):
                s["start"] = ti.start_date
            if ti.end_date and (s["end"] is None or ti.end_date > s["end"]):
                s["end"] = ti.end_date
        active = [t for t, s in steps.items() if any(st in ACTIVE[:1] for st in s["states"])]
        failed = [t for t, s in steps.items() if "failed" in s["states"]]
        done = sorted((s for s in steps.values() if s["end"]), key=lambda s: s["end"])
        step = (",".join(sorted(active)) or ",".join(sorted(failed)) or (done[-1]["task_id"] if done else None))
        xcoms = _xcom_values(session, r.run_id, ("inspect", "finish_calibration", "finish_imaging", "publish"))
        inspect = xcoms.get("inspect") if isinstance(xcoms.get("inspect"), dict) else {}
        cal = xcoms.get("finish_calibration") if isinstance(xcoms.get("finish_calibration"), dict) else {}
        pub = xcoms.get("publish") if isinstance(xcoms.get("publish"), dict) else {}
        state = str(r.state.value if hasattr(r.state, "value") else r.state)
        rows.append({
            "mous_uid": mous, "runs": counts[mous], "run_id": r.run_id, "state": state,
            "step": step, "queued_at": _iso(r.queued_at), "start_date": _iso(r.start_date),
            "end_date": _iso(r.end_date), "duration_s": _seconds(r.start_date, r.end_date),
            "casa_version": cal.get("casa") or inspect.get("casa_version"),
            "calibration": cal.get("engine") or inspect.get("calibration"),
            "steps": {t: {"duration_s": _seconds(s["start"], s["end"]) if s["start"] else None,
                          "instances": s["instances"], "states": s["states"]}
                      for t, s in sorted(steps.items(), key=lambda kv: kv[1]["start"] or r.queued_at or r.run_after)},
            "published_run": pub.get("run"), "run_url": _run_url(r.run_id),
        })
    return rows


def _run_url(run_id: str) -> str:
    from .notify import run_url
    return run_url(DAG_ID, run_id) if run_id else ""


def _products_client():
    """boto3 S3 client of the `alma_products_s3` connection (read in the api-server)."""
    import boto3
    from botocore.config import Config

    from airflow.models.connection import Connection

    from .deadlines import server_settings
    s = server_settings()
    conn = Connection.get_connection_from_secrets(s.products_s3_conn)
    extra = conn.extra_dejson
    endpoint = extra.get("endpoint_url") or extra.get("host")
    return boto3.client("s3", endpoint_url=endpoint, region_name=extra.get("region_name", "us-east-1"),
                        aws_access_key_id=conn.login or None, aws_secret_access_key=conn.password or None,
                        config=Config(s3={"addressing_style": "path"} if endpoint else {},
                                      connect_timeout=5, read_timeout=10, retries={"max_attempts": 2})), s


def manifests(rows: list) -> None:
    """Add each MOUS's published manifest (latest.json -> manifest.json) to its row."""
    if not rows:
        return
    try:
        client, s = _products_client()
    except Exception as exc:  # noqa: BLE001 - the page still shows the runs
        log.warning("products bucket not readable: %s", exc)
        for r in rows:
            r["published"] = None
        return
    if not s.products_url:
        for r in rows:
            r["published"] = None
        return
    from concurrent.futures import ThreadPoolExecutor

    from .publish import parse_s3_url
    bucket, prefix = parse_s3_url(s.products_url)
    with ThreadPoolExecutor(8, thread_name_prefix="manifests") as pool:
        list(pool.map(lambda r: _manifest_of(client, bucket, prefix, r), rows))


def _manifest_of(client, bucket: str, prefix: str, r: dict) -> None:
    """latest.json -> manifest.json of one MOUS into its row (published=None when there is none)."""
    from .naming import uid_to_file
    mous_f = uid_to_file(r["mous_uid"])
    key = "/".join(x for x in (prefix, mous_f) if x) + "/latest.json"
    try:
        latest = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        mkey = latest["manifest"].split(f"s3://{bucket}/", 1)[1]
        m = json.loads(client.get_object(Bucket=bucket, Key=mkey)["Body"].read())
    except Exception as exc:  # noqa: BLE001 - not published (yet), or unreadable
        r["published"] = None
        if "NoSuchKey" not in str(exc) and "404" not in str(exc):
            r["published_error"] = str(exc)[:200]
        return
    engines = m.get("engines") or {}
    base = f"{VIEW_PREFIX}/products/{mous_f}/{m['run']}"
    r["published"] = {
        "run": m["run"], "published_at": m.get("published_at"), "location": m.get("location"),
        "casa_calibration": (engines.get("calibration") or {}).get("casa"),
        "casa_imaging": (engines.get("imaging") or {}).get("casa"),
        "timings_s": m.get("timings_s"), "outputs": len(m.get("outputs") or []),
        "fidelity_ok": (m.get("fidelity") or {}).get("ok"),
        "summary_url": f"{base}/index.html", "manifest_url": f"{base}/manifest.json",
    }
    if not r.get("casa_version"):
        r["casa_version"] = r["published"]["casa_calibration"]


# ------------------------------------------------------------------ page
def _page(rows: list) -> str:
    def cell(v):
        return html.escape("" if v is None else str(v))

    body = []
    for r in rows:
        pub = r.get("published") or {}
        links = " ".join(f'<a href="{cell(u)}">{n}</a>' for n, u in
                         (("summary", pub.get("summary_url")), ("manifest", pub.get("manifest_url"))) if u)
        steps = ", ".join(f"{cell(t)} {s['duration_s']:.0f}s" for t, s in r["steps"].items()
                          if s.get("duration_s") is not None)
        body.append(
            f'<tr class="state-{cell(r["state"])}"><td><code>{cell(r["mous_uid"])}</code></td>'
            f'<td><a href="{cell(r["run_url"])}">{cell(r["state"])}</a></td><td>{cell(r["step"])}</td>'
            f'<td>{cell(r.get("casa_version"))}</td><td>{cell(r["queued_at"])}</td>'
            f'<td>{cell(r["duration_s"])}</td><td class="steps">{steps}</td>'
            f'<td>{cell(pub.get("run"))}{" (fidelity ok)" if pub.get("fidelity_ok") else ""}</td>'
            f'<td>{links}</td><td>{cell(r["runs"])}</td></tr>')
    rows_html = "\n".join(body) or '<tr><td colspan="10">No alma_regenerate runs yet.</td></tr>'
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>ALMA reprocessing</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}}
.state-success td:nth-child(2){{background:#d5f5e3}}.state-failed td:nth-child(2){{background:#fadbd8}}
.state-running td:nth-child(2){{background:#d6eaf8}}.steps{{font-size:11px;max-width:28em}}</style></head>
<body><h1>ALMA reprocessing</h1>
<p>Latest <code>{DAG_ID}</code> run per MOUS (from Airflow's database) and its published products
(from the manifests in S3). <a href="{VIEW_PREFIX}/api/mous">JSON</a></p>
<table><tr><th>MOUS</th><th>State</th><th>Step</th><th>CASA</th><th>Queued</th><th>Duration (s)</th>
<th>Step durations</th><th>Published run</th><th>Products</th><th>Runs</th></tr>
{rows_html}
</table></body></html>"""


# ------------------------------------------------------------------ app
def create_app():
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, StreamingResponse

    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from airflow.utils.session import create_session

    can_read = [Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID))]
    app = FastAPI(title="ALMA reprocessing", dependencies=can_read)

    def collect() -> list:
        with create_session() as session:
            rows = run_rows(session)
        manifests(rows)
        return rows

    @app.get("/api/mous")
    def list_mous():
        return collect()

    @app.get("/", response_class=HTMLResponse)
    def page():
        return HTMLResponse(_page(collect()))

    @app.get("/products/{mous_f}/{run}/{path:path}")
    def product(mous_f: str, run: str, path: str):
        if not (_MOUS_F.match(mous_f) and _RUN.match(run) and _PATH.match(path)) or ".." in path.split("/"):
            raise HTTPException(400, "bad product path")
        try:
            client, s = _products_client()
        except Exception as exc:  # noqa: BLE001
            raise HTTPException(503, f"products bucket not configured: {exc}") from None
        if not s.products_url:
            raise HTTPException(404, "no products_url configured: nothing is published")
        from .publish import parse_s3_url
        bucket, prefix = parse_s3_url(s.products_url)
        key = "/".join(x for x in (prefix, mous_f, run, path) if x)
        try:
            obj = client.get_object(Bucket=bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NoSuchBucket"):
                raise HTTPException(404, f"not published (yet): s3://{bucket}/{key}") from None
            raise HTTPException(502, f"products bucket: {exc}") from None
        return StreamingResponse(obj["Body"].iter_chunks(1 << 20),
                                 media_type=obj.get("ContentType") or "application/octet-stream",
                                 headers={"Content-Length": str(obj["ContentLength"])})

    return app


__all__ = ["create_app", "run_rows", "manifests", "publish_run_id"]
