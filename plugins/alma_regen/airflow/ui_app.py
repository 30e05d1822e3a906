"""The "Reprocessing" view: a FastAPI app the api-server mounts under /alma-regen.

    GET /                 HTML: every MOUS with its alma_regenerate runs (latest first),
                          state, current step, durations; ?q= searches, ?state= filters
    GET /api/mous         the same as JSON (one object per MOUS, its latest run's fields at
                          the top and every run in "history")
    GET /api/campaign     the latest bulk campaign's progress (alma_regen.campaign), null
                          when there was no alma_bulk_reprocess run; the page shows it above
                          the table
    GET /products/<MOUS>/<run>/<path>   a published object, streamed from the products bucket

Everything comes from Airflow's own database (DagRuns, TaskInstances and the
small XComs of alma_regenerate, through the api-server's ORM session) and from
the manifests in S3 (`<MOUS>/latest.json` -> `manifest.json`): no second
database. Every route needs the caller to be allowed to read alma_regenerate's
runs (the api-server's auth manager, the UI's session cookie or a bearer token).

Links carry no host: they are built from the request's mount point, so they work
on whatever host the UI was opened on. Airflow shows the page in an iframe
sandboxed without popups or top navigation; a click on a link is handed to the
top window (same origin), which opens it in a new tab, never inside the frame.

Stable hooks for the browser tests: table#mous-runs, input#search,
select#state-filter; one tbody.mous[data-mous] per MOUS, tr.run[data-run-id]
[data-state] per run (tr.history for earlier runs, shown by button.history-toggle);
td.step, td.casa, span.state-badge, span.why; links a.run-link, a.rerun,
a.products-summary, a.products-manifest; section#campaign[data-total][data-done]
[data-running][data-waiting][data-failed][data-too-large] with its div.progress (only after a bulk run).
"""
from __future__ import annotations

import html
import json
import logging
import re
from datetime import UTC, datetime
from types import SimpleNamespace
from urllib.parse import quote

# At module level: with postponed annotations FastAPI resolves `request: Request` in the
# module's globals (imported inside create_app it reads it as a query parameter: a 422).
from fastapi import Request

from .. import s3
from .ui import DAG_ID, VIEW_PREFIX, publish_run_id, ui_path

log = logging.getLogger(__name__)

MAX_RUNS = 2000
MAX_MOUS = 200
HISTORY = 10  # runs shown per MOUS (the latest first)
MAX_BULK_RUNS = 500  # bulk runs looked back through for the start of the latest campaign
_MOUS_F = re.compile(r"^uid___[A-Za-z0-9]+_[A-Za-z0-9]+_[A-Za-z0-9]+$")
_RUN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PATH = re.compile(r"^[A-Za-z0-9._/-]{1,512}$")
ACTIVE = ("running", "queued", "up_for_retry", "up_for_reschedule", "deferred", "scheduled", "restarting")
# States of a task that did not run: no duration, never "the step" of a run.
NOT_RUN = ("skipped", "upstream_failed", "removed", "none")
# The teardown that frees the MOUS runs last in every run: it is never the run's step.
TEARDOWN = "release_mous"
# A task that ran CASA records its version in its XCom (only those: a skipped run ran none).
CASA_TASKS = ("finish_calibration",)
STATES = ("running", "queued", "success", "skipped", "failed")
# The phases of the DAG's task groups, for the colours of the duration bar.
PHASES = {"stage": ("stage_auxiliary", "inspect", "stage_asdm", "check_staged"),
          "calibrate": ("prepare_calibration", "restore_eb", "finish_calibration"),
          "image": ("plan_imaging", "image_unit", "finish_imaging", "fidelity"),
          "publish": ("publish",)}


def phase_of(task_id: str) -> str:
    return next((p for p, tasks in PHASES.items() if task_id in tasks), "other")
SKIPPED_WHY = "already published with the same inputs and CASA (trigger with force=true to regenerate)"


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


def _state(v) -> str:
    return str(v.value if hasattr(v, "value") else v or "none")


def _xcoms(session, run_ids, task_ids, dag_id: str = DAG_ID, key: str = "return_value") -> dict:
    """{run_id: {task_id: value}} of the XComs `key` of `task_ids`, one query per 100 runs."""
    from sqlalchemy import select

    from airflow.models.xcom import XComModel
    out: dict = {}
    for i in range(0, len(run_ids), 100):
        rows = session.execute(select(XComModel.run_id, XComModel.task_id, XComModel.value).where(
            XComModel.dag_id == dag_id, XComModel.run_id.in_(run_ids[i:i + 100]),
            XComModel.key == key, XComModel.map_index < 0,
            XComModel.task_id.in_(list(task_ids)))).all()
        for run_id, task_id, value in rows:
            try:
                v = XComModel.deserialize_value(SimpleNamespace(value=value))
            except Exception:  # noqa: BLE001
                v = value if not isinstance(value, str) else _maybe_json(value)
            out.setdefault(run_id, {})[task_id] = v
    return out


def _maybe_json(v):
    try:
        return json.loads(v)
    except (TypeError, ValueError):
        return v


def _note(obj) -> str | None:
    try:
        n = obj.note
    except Exception:  # noqa: BLE001 - a detached row: no note
        return None
    return str(n) if n else None


def _run_entry(r, tis: list, xcoms: dict) -> dict:
    """One run as the view shows it: what ran, for how long, where it is, and why it stopped."""
    steps, by_task = {}, {}
    for ti in tis:
        state = _state(ti.state)
        by_task.setdefault(ti.task_id, []).append((state, ti))
        if state in NOT_RUN:
            continue  # a skipped step ran nothing: no "0 s" for it
        s = steps.setdefault(ti.task_id, {"states": {}, "start": None, "end": None, "instances": 0})
        s["states"][state] = s["states"].get(state, 0) + 1
        s["instances"] += 1
        if ti.start_date and (s["start"] is None or ti.start_date < s["start"]):
            s["start"] = ti.start_date
        if ti.end_date and (s["end"] is None or ti.end_date > s["end"]):
            s["end"] = ti.end_date
    run_state = _state(r.state)
    running = sorted(t for t, s in steps.items() if "running" in s["states"] and t != TEARDOWN)
    failed = sorted(t for t, s in steps.items() if "failed" in s["states"])
    done = sorted((t for t, s in steps.items() if s["end"] and t != TEARDOWN), key=lambda t: steps[t]["end"])
    check = [st for st, _ in by_task.get("check_published", [])]
    skipped = run_state == "success" and "skipped" in check
    status, why = run_state, None
    if skipped:
        status = "skipped"
        ti = by_task["check_published"][0][1]
        why = _note(ti) or SKIPPED_WHY
    elif run_state == "success" and [st for st, _ in by_task.get("publish", [])] == ["skipped"]:
        why = "not published: Publish was off or no products bucket is configured"
    if run_state in ("success", "failed") and not failed:
        step = "check_published" if skipped else None  # a finished run is at no step
    else:
        step = ",".join(running) or ",".join(failed) or None
    cal = xcoms.get("finish_calibration") if isinstance(xcoms.get("finish_calibration"), dict) else {}
    pub = xcoms.get("publish") if isinstance(xcoms.get("publish"), dict) else {}
    order = r.queued_at or r.run_after
    return {
        "run_id": r.run_id, "state": run_state, "status": status, "why": why, "note": _note(r),
        "step": step, "last_step": done[-1] if done else None,
        "queued_at": _iso(r.queued_at), "start_date": _iso(r.start_date), "end_date": _iso(r.end_date),
        "duration_s": _seconds(r.start_date, r.end_date),
        # Only a task that ran CASA says which: none for a run that stopped before calibrating.
        "casa_version": cal.get("casa") or None, "calibration": cal.get("engine") or None,
        "steps": {t: {"duration_s": _seconds(s["start"], s["end"]) if s["start"] else None,
                      "instances": s["instances"], "states": s["states"]}
                  for t, s in sorted(steps.items(), key=lambda kv: kv[1]["start"] or order)},
        "published_run": pub.get("run"), "conf": r.conf or {},
    }


def run_rows(session) -> list:
    """One row per MOUS (the latest run first): its runs of alma_regenerate, from Airflow's database."""
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance

    # Notes in one query per batch (selectin), not one lazy load per run.
    runs = session.scalars(select(DagRun).where(DagRun.dag_id == DAG_ID).options(selectinload(DagRun.dag_run_note))
                           .order_by(DagRun.run_after.desc(), DagRun.id.desc()).limit(MAX_RUNS)).all()
    history, counts = {}, {}
    for r in runs:
        mous = (r.conf or {}).get("mous_uid")
        if not mous:
            continue
        counts[mous] = counts.get(mous, 0) + 1
        if mous in history or len(history) < MAX_MOUS:
            if len(history.setdefault(mous, [])) < HISTORY:
                history[mous].append(r)
    run_ids = [r.run_id for rs in history.values() for r in rs]
    by_run = {}
    for i in range(0, len(run_ids), 100):  # one query per 100 runs, not one per run
        for ti in session.scalars(select(TaskInstance).options(selectinload(TaskInstance.task_instance_note))
                                  .where(TaskInstance.dag_id == DAG_ID, TaskInstance.run_id.in_(run_ids[i:i + 100]))):
            by_run.setdefault(ti.run_id, []).append(ti)
    xcoms = _xcoms(session, run_ids, CASA_TASKS + ("publish",))
    rows = []
    for mous, rs in history.items():
        entries = [_run_entry(r, by_run.get(r.run_id, []), xcoms.get(r.run_id, {})) for r in rs]
        rows.append({"mous_uid": mous, "runs": counts[mous], **entries[0], "history": entries})
    return rows


def campaign_of(session, now=None) -> dict | None:
    """The latest bulk campaign's progress (alma_regen.campaign), or None when no bulk run decided yet."""
    from sqlalchemy import select

    from airflow.models.dagrun import DagRun

    from ..campaign import BULK_DAG_ID, campaign_runs, summarize
    bulk = session.execute(select(DagRun.run_id, DagRun.start_date, DagRun.queued_at, DagRun.run_after)
                           .where(DagRun.dag_id == BULK_DAG_ID)
                           .order_by(DagRun.run_after.desc(), DagRun.id.desc()).limit(MAX_BULK_RUNS)).all()
    seen: list = []
    # A summary lists the whole worklist (a large one is big): read them a few runs at a
    # time, latest first, and stop where the line of runs of the latest worklist breaks.
    for i in range(0, len(bulk), 20):
        part = bulk[i:i + 20]
        xc = _xcoms(session, [b.run_id for b in part], ("plan",), dag_id=BULK_DAG_ID, key="summary")
        for b in part:
            summary = xc.get(b.run_id, {}).get("plan")
            seen.append({"run_id": b.run_id, "began": b.start_date or b.queued_at or b.run_after,
                         "summary": summary if isinstance(summary, dict) else None})
        chain = {b["run_id"] for b in campaign_runs(seen)}
        if chain and any(b["summary"] and b["run_id"] not in chain for b in seen):
            break
    chain = campaign_runs(seen)
    if not chain:
        return None
    began = min(b["began"] for b in chain)
    # Its own light query, not run_rows: a worklist can hold more MOUSs than the table shows.
    runs = session.execute(select(DagRun.conf, DagRun.state, DagRun.run_after, DagRun.queued_at, DagRun.start_date,
                                  DagRun.end_date).where(DagRun.dag_id == DAG_ID, DagRun.run_after >= began)).all()
    by_mous: dict = {}
    for r in runs:
        mous = (r.conf or {}).get("mous_uid")
        if mous:
            # Datetimes, not _iso's whole seconds: a run triggered in the bulk run's first
            # second would read as older than the campaign.
            by_mous.setdefault(mous, []).append(
                {"state": _state(r.state), "run_after": r.run_after, "queued_at": r.queued_at,
                 "start_date": r.start_date, "end_date": r.end_date})
    rows = [{"mous_uid": m, "history": h} for m, h in by_mous.items()]
    return summarize(chain, rows, now or datetime.now(tz=UTC))


def add_links(rows: list, ui: str) -> None:
    """Links relative to the host the UI is on: `ui` is the UI's path ("" at the root)."""
    for row in rows:
        for run in row["history"]:
            run["run_url"] = f"{ui}/dags/{DAG_ID}/runs/{quote(run['run_id'], safe='')}"
            # Airflow 3.3's trigger form cannot be prefilled from a URL; on a run's page its
            # Trigger menu has "Trigger again with this config", the form filled with this run's.
            run["rerun_url"] = run["run_url"]
        row["run_url"], row["rerun_url"] = row["history"][0]["run_url"], row["history"][0]["rerun_url"]
        pub = row.get("published")
        if pub:
            base = f"{ui}{VIEW_PREFIX}/products/{pub['mous_f']}/{pub['run']}"
            pub["summary_url"], pub["manifest_url"] = f"{base}/index.html", f"{base}/manifest.json"


def _products_client():
    """The client of the products connection, and the settings that name it (api-server)."""
    from .deadlines import server_settings
    from .hooks.products import api_server_client
    s = server_settings()
    return api_server_client(s.products_s3_conn), s


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

    bucket, prefix = s3.parse_s3_url(s.products_url)
    with ThreadPoolExecutor(8, thread_name_prefix="manifests") as pool:
        list(pool.map(lambda r: _manifest_of(client, bucket, prefix, r), rows))


def _manifest_of(client, bucket: str, prefix: str, r: dict) -> None:
    """latest.json -> manifest.json of one MOUS into its row (published=None when there is none)."""
    from ..naming import uid_to_file
    mous_f = uid_to_file(r["mous_uid"])
    key = s3.key(prefix, mous_f, "latest.json")
    try:
        latest = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        mkey = latest["manifest"].split(f"s3://{bucket}/", 1)[1]
        m = json.loads(client.get_object(Bucket=bucket, Key=mkey)["Body"].read())
    except Exception as exc:  # noqa: BLE001 - not published (yet), or unreadable
        r["published"] = None
        if not s3.is_missing(exc):
            r["published_error"] = str(exc)[:200]
        return
    engines = m.get("engines") or {}
    r["published"] = {
        "run": m["run"], "mous_f": mous_f, "published_at": m.get("published_at"), "location": m.get("location"),
        "casa_calibration": (engines.get("calibration") or {}).get("casa"),
        "casa_imaging": (engines.get("imaging") or {}).get("casa"),
        "timings_s": m.get("timings_s"), "outputs": len(m.get("outputs") or []),
        "fidelity_ok": (m.get("fidelity") or {}).get("ok"),
    }
    for run in r["history"]:
        if run["status"] == "skipped" and run["why"] == SKIPPED_WHY:
            run["why"] = f"already published as run {m['run']} with the same inputs and CASA"
    r["why"] = r["history"][0]["why"]


def select_rows(rows: list, q: str = "", state: str = "") -> list:
    """The MOUSs whose uid or a run id holds `q` (any case) and whose latest run is in `state`."""
    q = (q or "").strip().lower()
    out = []
    for r in rows:
        if state and r["status"] != state:
            continue
        if q and q not in r["mous_uid"].lower() and not any(q in h["run_id"].lower() for h in r["history"]):
            continue
        out.append(r)
    return out


# ------------------------------------------------------------------ page
def _fmt_s(v) -> str:
    if v is None:
        return ""
    v = float(v)
    if v < 60:
        return f"{v:.0f}s"
    if v < 3600:
        return f"{int(v // 60)}m {int(v % 60):02d}s"
    return f"{int(v // 3600)}h {int(v % 3600 // 60):02d}m"


def _when(iso: str | None) -> str:
    return (iso or "").replace("T", " ")[:19]


def _run_row(row: dict, run: dict, latest: bool) -> str:
    e = html.escape
    pub = row.get("published") or {}
    status = run["status"]
    why = f'<span class="why">{e(run["why"])}</span>' if run.get("why") else ""
    total = sum(s["duration_s"] or 0 for s in run["steps"].values()) or 1
    bar = "".join(
        f'<span class="seg {phase_of(t)}" style="flex-grow:{max(s["duration_s"] or 0, total / 200):.1f}" '
        f'title="{e(t)}: {_fmt_s(s["duration_s"])}{" x" + str(s["instances"]) if s["instances"] > 1 else ""}">'
        f'</span>' for t, s in run["steps"].items() if s["duration_s"] is not None and t != TEARDOWN)
    steps = ", ".join(f"{e(t)} {_fmt_s(s['duration_s'])}" for t, s in run["steps"].items()
                      if s["duration_s"] is not None)
    durations = (f'<div class="bar">{bar}</div><details><summary>{len(run["steps"])} step{"s" if len(run["steps"]) != 1 else ""}</summary>'
                 f'<div class="steps">{steps}</div></details>') if bar else '<span class="muted">no step ran</span>'
    step = e(run["step"]) if run["step"] else '<span class="muted">—</span>'
    casa = e(run["casa_version"]) if run["casa_version"] else '<span class="muted" title="no CASA ran">—</span>'
    products = ""
    if latest and pub.get("summary_url"):
        fid = ' <span class="ok" title="fidelity check passed">✓ fidelity</span>' if pub.get("fidelity_ok") else ""
        products = (f'<a class="products-summary ext" href="{e(pub["summary_url"])}" target="_blank" '
                    f'rel="noopener">summary</a> · <a class="products-manifest ext" href="{e(pub["manifest_url"])}" '
                    f'target="_blank" rel="noopener">manifest</a><div class="muted small">run {e(pub["run"])}{fid}</div>')
    elif run.get("published_run"):
        products = f'<span class="muted small">published as {e(run["published_run"])}</span>'
    first = ""
    if latest:
        more = len(row["history"]) - 1
        toggle = (f'<button type="button" class="history-toggle" aria-expanded="false">{more} earlier '
                  f'run{"s" if more != 1 else ""}</button>') if more else ""
        first = f'<td class="mous" rowspan="1"><code>{e(row["mous_uid"])}</code>{toggle}</td>'
    else:
        first = '<td class="mous"></td>'
    cls = "run" + ("" if latest else " history")
    return (f'<tr class="{cls}" data-run-id="{e(run["run_id"])}" data-state="{e(status)}">{first}'
            f'<td><span class="state-badge state-{e(status)}">{e(status)}</span>{why}</td>'
            f'<td class="step">{step}</td>'
            f'<td class="when">{e(_when(run["start_date"] or run["queued_at"]))}</td>'
            f'<td class="num">{_fmt_s(run["duration_s"])}</td>'
            f'<td class="durations">{durations}</td>'
            f'<td class="casa">{casa}</td><td class="products">{products}</td>'
            f'<td class="actions"><a class="run-link ext" href="{e(run["run_url"])}" target="_blank" rel="noopener" '
            f'title="this run in Airflow ({e(run["run_id"])})">run</a>'
            f'<a class="rerun ext" href="{e(run["rerun_url"])}" target="_blank" rel="noopener" '
            f'title="opens this run in Airflow: Trigger ▸ Trigger again with this config opens the form '
            f'filled with this MOUS">rerun</a></td></tr>')


def _rate(v) -> str:
    return "—" if v is None else f"{v:.1f} MOUS/h" if v >= 0.1 else f"{v:.2f} MOUS/h"


def _campaign_panel(c: dict | None) -> str:
    """The latest bulk campaign above the table; nothing when there was no bulk run."""
    if not c:
        return ""
    e, total = html.escape, c["total"] or 1
    eta = "complete" if c["complete"] else (_fmt_s(c["eta_s"]) if c["eta_s"] is not None else "—")
    segs = "".join(f'<span class="seg {k}" style="width:{100 * c[k] / total:.2f}%"></span>'
                   for k in ("done", "failed", "parked", "running") if c.get(k))
    stats = "".join(f'<span class="stat" data-stat="{k}"><i class="dot {k}"></i>{label} <b>{c[k]}</b></span>'
                    for k, label in (("done", "done"), ("running", "running/queued"), ("waiting", "waiting"),
                                     ("failed", "failed"), ("parked", "parked"), ("too_large", "too large"))
                    if k not in ("parked", "too_large") or c.get(k))
    runs = f'{c["bulk_runs"]} bulk run{"s" if c["bulk_runs"] != 1 else ""}, latest '
    failed = ""
    for key, title in (("failed_mous", "failed MOUSs"), ("too_large_mous", "MOUSs larger than the disk budget")):
        if c.get(key):
            failed += (f'<details class="{key.replace("_", "-")}"><summary>{title}</summary><div class="steps">'
                       + ", ".join(f"<code>{e(m)}</code>" for m in c[key]) + "</div></details>")
    if c.get("parked_mous"):
        failed += ('<details class="parked-mous"><summary>parked MOUSs (failed again and again; '
                   'started again only when forced)</summary><ul class="steps">'
                   + "".join(f"<li><code>{e(p['mous_uid'] or '')}</code>: {e(p['why'] or '')}</li>"
                             for p in c["parked_mous"]) + "</ul></details>")
    return (f'<section id="campaign" class="campaign" aria-label="Bulk reprocessing campaign" '
            f'data-total="{c["total"]}" data-done="{c["done"]}" data-running="{c["running"]}" '
            f'data-waiting="{c["waiting"]}" data-failed="{c["failed"]}" data-parked="{c.get("parked", 0)}" data-too-large="{c.get("too_large", 0)}">'
            f'<div class="campaign-head"><h2>Bulk reprocessing</h2>'
            f'<span class="muted small">worklist of {c["total"]} MOUS{"s" if c["total"] != 1 else ""} · since '
            f'{e(_when(c["began"]))} UTC · {runs}<a class="bulk-run ext" href="{e(c.get("bulk_run_url") or "")}" '
            f'target="_blank" rel="noopener">{e(c["bulk_run_id"])}</a></span>'
            f'<span class="pct">{c["percent_done"]:g}% done</span></div>'
            f'<div class="progress" role="progressbar" aria-label="MOUSs done" aria-valuemin="0" '
            f'aria-valuemax="{c["total"]}" aria-valuenow="{c["done"]}" title="{c["done"]} of {c["total"]} done">'
            f'{segs}</div><div class="stats">{stats}'
            f'<span class="stat" data-stat="throughput">throughput <b>{_rate(c["throughput_per_h"])}</b></span>'
            f'<span class="stat" data-stat="eta">ETA <b>{e(eta)}</b></span></div>{failed}</section>')


def _page(rows: list, all_rows: list, q: str = "", state: str = "", campaign: dict | None = None) -> str:
    e = html.escape
    counts = {s: sum(r["status"] == s for r in all_rows) for s in STATES}
    chips = "".join(f'<span class="chip state-{s}" data-count="{s}">{s} {counts[s]}</span>'
                    for s in STATES if counts[s])
    options = "".join(f'<option value="{s}"{" selected" if s == state else ""}>{s}</option>' for s in STATES)
    body = []
    for r in rows:
        trs = [_run_row(r, r["history"][0], True)] + [_run_row(r, h, False) for h in r["history"][1:]]
        body.append(f'<tbody class="mous" data-mous="{e(r["mous_uid"])}" data-state="{e(r["status"])}">'
                    + "".join(trs) + "</tbody>")
    empty = ("No alma_regenerate run yet: trigger one from the DAG's page." if not all_rows
             else "No MOUS matches.")
    parts = {"CHIPS": chips, "OPTIONS": options, "Q": e(q), "EMPTY": e(empty),
             "EMPTY_HIDDEN": "" if not rows else " hidden", "DAG": DAG_ID,
             "CAMPAIGN": _campaign_panel(campaign), "ROWS": "\n".join(body)}
    # In one pass: a search, run id or note that reads "%ROWS%" stays text, not a second table.
    return re.sub(r"%([A-Z_]+)%", lambda m: parts.get(m.group(1), m.group(0)), _PAGE)


_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Reprocessing</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
:root{--bg:#fff;--fg:#000;--muted:#52525b;--border:#e4e4e7;--subtle:#fafafa;--accent:#2563eb;
 --success:#16a34a;--failed:#dc2626;--running:#0891b2;--queued:#78716c;--skipped:#db2777;--seg:#60a5fa}
html.dark{--bg:#09090b;--fg:#fafafa;--muted:#a1a1aa;--border:#27272a;--subtle:#18181b;--accent:#60a5fa;
 --success:#4ade80;--failed:#f87171;--running:#22d3ee;--queued:#a8a29e;--skipped:#f472b6;--seg:#3b82f6}
body{margin:0;padding:16px 20px;background:var(--bg);color:var(--fg);font:14px/1.5 Inter,-apple-system,
 BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif}
h1{font-size:20px;font-weight:600;margin:0 0 4px}
p.lead{color:var(--muted);margin:0 0 16px}
.toolbar{display:flex;gap:8px;align-items:center;flex-wrap:wrap;margin-bottom:12px}
input,select,button{font:inherit;color:var(--fg);background:var(--bg);border:1px solid var(--border);
 border-radius:6px;padding:6px 10px}
input#search{min-width:22em}
button.history-toggle{display:block;margin-top:4px;padding:1px 8px;font-size:12px;cursor:pointer;color:var(--muted)}
.chip{font-size:12px;border-radius:999px;padding:2px 10px;border:1px solid var(--border)}
table{border-collapse:collapse;width:100%}
th{font-weight:600;text-align:left;color:var(--muted);font-size:12px;border-bottom:1px solid var(--border);
 padding:8px 10px;white-space:nowrap}
td{border-bottom:1px solid var(--border);padding:8px 10px;vertical-align:top}
tbody.mous:hover{background:var(--subtle)}
tbody.mous:not(.open) tr.history{display:none}
tr.history td{font-size:13px}
td.mous code{font-size:13px}
td.num,td.when,td.casa,td.products{white-space:nowrap}
.state-badge{display:inline-block;border-radius:999px;padding:1px 10px;font-size:12px;font-weight:500;color:#fff}
.state-success{background:var(--success)}.state-failed{background:var(--failed)}
.state-running{background:var(--running)}.state-queued{background:var(--queued)}
.state-skipped{background:var(--skipped)}
.chip.state-success,.chip.state-failed,.chip.state-running,.chip.state-queued,.chip.state-skipped{color:#fff;border:0}
.why{display:block;color:var(--muted);font-size:12px;max-width:22em}
.muted{color:var(--muted)}.small{font-size:12px}.ok{color:var(--success)}
.bar{display:flex;height:8px;width:14em;border-radius:4px;overflow:hidden;gap:1px;background:var(--border)}
.bar .seg{background:var(--queued);min-width:2px}.bar .stage{background:#3b82f6}.bar .calibrate{background:#8b5cf6}
.bar .image{background:#f59e0b}.bar .publish{background:#10b981}
.legend i{display:inline-block;width:8px;height:8px;border-radius:2px;margin:0 3px 0 8px}
details summary{cursor:pointer;color:var(--muted);font-size:12px}
.steps{font-size:12px;max-width:30em;color:var(--muted)}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
.actions a{margin-right:10px;white-space:nowrap}
[hidden]{display:none!important}
section.campaign{border:1px solid var(--border);border-radius:8px;padding:12px 16px;margin:0 0 16px}
.campaign-head{display:flex;gap:12px;align-items:baseline;flex-wrap:wrap;margin-bottom:8px}
.campaign-head h2{font-size:16px;font-weight:600;margin:0}.campaign-head .pct{margin-left:auto;font-weight:600}
.progress{display:flex;height:10px;border-radius:5px;overflow:hidden;background:var(--border)}
.progress .seg{height:100%}.progress .done{background:var(--success)}.progress .failed{background:var(--failed)}
.progress .running{background:var(--running)}.progress .parked{background:var(--muted)}
.stats{display:flex;gap:20px;flex-wrap:wrap;margin-top:8px;font-size:13px;color:var(--muted)}
.stats b{color:var(--fg);font-weight:600}
.dot{display:inline-block;width:8px;height:8px;border-radius:50%;margin-right:5px;background:var(--queued)}
.dot.done{background:var(--success)}.dot.running{background:var(--running)}.dot.failed{background:var(--failed)}
.dot.waiting{background:var(--border);box-shadow:inset 0 0 0 1px var(--muted)}
.dot.parked{background:var(--muted)}
</style></head>
<body><h1>Reprocessing</h1>
<p class="lead">Every MOUS with its <code>%DAG%</code> runs (latest first), from Airflow's database,
and its published products, from the manifests in S3. Links open in a new tab.</p>
%CAMPAIGN%
<form class="toolbar" method="get" role="search">
<input id="search" name="q" type="search" value="%Q%" placeholder="Search MOUS uid or run id"
 aria-label="Search MOUS uid or run id">
<select id="state-filter" name="state" aria-label="Latest run state"><option value="">All states</option>%OPTIONS%</select>
<noscript><button type="submit">Filter</button></noscript>
%CHIPS%</form>
<table id="mous-runs"><thead><tr><th>MOUS</th><th>State</th><th>Step</th><th>Started</th><th>Duration</th>
<th>Step durations <span class="legend small muted"><i class="seg stage" style="background:#3b82f6"></i>stage<i
 style="background:#8b5cf6"></i>calibrate<i style="background:#f59e0b"></i>image<i style="background:#10b981"></i>publish</span></th><th>CASA</th><th>Products</th><th></th></tr></thead>
%ROWS%
</table>
<p id="empty" class="muted"%EMPTY_HIDDEN%>%EMPTY%</p>
<script>
(function () {
  // The colour mode of the Airflow UI around us (same origin), else the system's.
  var dark = window.matchMedia && matchMedia("(prefers-color-scheme: dark)").matches;
  try { if (window.top !== window) dark = top.document.documentElement.classList.contains("dark"); } catch (e) {}
  if (dark) document.documentElement.classList.add("dark");
  // Airflow's iframe has no allow-popups: a link opens from the top window, in a new tab.
  document.addEventListener("click", function (ev) {
    var a = ev.target.closest && ev.target.closest("a.ext");
    if (!a || window.top === window) return;
    try {
      var d = top.document, t = d.createElement("a");
      t.href = new URL(a.getAttribute("href"), location.href).href;
      t.target = "_blank"; t.rel = "noopener"; t.style.display = "none";
      d.body.appendChild(t); t.click(); t.remove(); ev.preventDefault();
    } catch (e) { /* another origin: the link's own target */ }
  });
  document.querySelectorAll("button.history-toggle").forEach(function (b) {
    b.addEventListener("click", function () {
      var open = b.closest("tbody").classList.toggle("open");
      b.setAttribute("aria-expanded", open ? "true" : "false");
    });
  });
  var q = document.getElementById("search"), st = document.getElementById("state-filter");
  function apply() {
    var text = q.value.trim().toLowerCase(), want = st.value, shown = 0;
    document.querySelectorAll("#mous-runs tbody.mous").forEach(function (tb) {
      var ids = [tb.dataset.mous].concat([].map.call(tb.querySelectorAll("tr.run"), function (r) { return r.dataset.runId; }));
      var ok = (!want || tb.dataset.state === want) && (!text || ids.some(function (x) { return x.toLowerCase().indexOf(text) >= 0; }));
      tb.hidden = !ok; if (ok) shown++;
    });
    var empty = document.getElementById("empty");
    empty.hidden = shown > 0; if (!shown) empty.textContent = "No MOUS matches.";
    var u = new URL(location.href);
    text ? u.searchParams.set("q", q.value.trim()) : u.searchParams.delete("q");
    want ? u.searchParams.set("state", want) : u.searchParams.delete("state");
    history.replaceState(null, "", u);
  }
  q.addEventListener("input", apply); st.addEventListener("change", apply);
  q.form.addEventListener("submit", function (ev) { ev.preventDefault(); apply(); });
})();
</script></body></html>"""


def ui_root(scope: dict) -> str:
    """The UI's path for this request: the mount point of this app less /alma-regen."""
    root = (scope.get("root_path") or "").rstrip("/")
    if root.endswith(VIEW_PREFIX):
        return root[: -len(VIEW_PREFIX)]
    return ui_path()


# ------------------------------------------------------------------ app
def create_app():
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, StreamingResponse

    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from airflow.utils.session import create_session

    can_read = [Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID))]
    app = FastAPI(title="ALMA reprocessing", dependencies=can_read)

    def collect(request) -> list:
        with create_session() as session:
            rows = run_rows(session)
        manifests(rows)
        add_links(rows, ui_root(request.scope))
        return rows

    def campaign(request) -> dict | None:
        from ..campaign import BULK_DAG_ID
        with create_session() as session:
            c = campaign_of(session)
        if c:
            c["bulk_run_url"] = f"{ui_root(request.scope)}/dags/{BULK_DAG_ID}/runs/{quote(c['bulk_run_id'], safe='')}"
        return c

    @app.get("/api/mous")
    def list_mous(request: Request, q: str = "", state: str = ""):
        return select_rows(collect(request), q, state)

    @app.get("/api/campaign")
    def get_campaign(request: Request):
        """The latest bulk campaign's progress; null when there was no bulk run."""
        return campaign(request)

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request, q: str = "", state: str = ""):
        rows = collect(request)
        try:
            c = campaign(request)
        except Exception as exc:  # noqa: BLE001 - the page still shows the runs
            log.warning("bulk campaign not readable: %s", exc)
            c = None
        return HTMLResponse(_page(select_rows(rows, q, state), rows, q, state if state in STATES else "", c))

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
        bucket, prefix = s3.parse_s3_url(s.products_url)
        key = s3.key(prefix, mous_f, run, path)
        try:
            obj = client.get_object(Bucket=bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            if s3.is_missing(exc):
                raise HTTPException(404, f"not published (yet): s3://{bucket}/{key}") from None
            raise HTTPException(502, f"products bucket: {exc}") from None
        return StreamingResponse(obj["Body"].iter_chunks(1 << 20),
                                 media_type=obj.get("ContentType") or "application/octet-stream",
                                 headers={"Content-Length": str(obj["ContentLength"])})

    return app


__all__ = ["create_app", "run_rows", "manifests", "publish_run_id"]
