"""How far a bulk reprocessing campaign is: the arithmetic behind the view's campaign panel.

A campaign is one worklist worked through by successive alma_bulk_reprocess runs: each
run's `plan` summary lists every MOUS of the worklist as start, skipped (published as it
would be again) or deferred, so the latest summary is the whole worklist and its current
split. A MOUS is

    done     skipped by the latest plan, or its latest alma_regenerate run since the
             campaign began succeeded
    failed   its latest run since the campaign began failed
    running  its latest run since the campaign began is queued or running
    waiting  deferred, or to start and not started yet
    parked   failed bulk_max_attempts runs in a row (attempts.py): not started again until
             forced; the plan says why (the last error)
    too_large  larger than the whole disk budget (admission.py): never started

Per MOUS that failed before, the latest plan also gives its failed runs in a row and
the last error ("attempts"), passed on as they are.

Throughput is the MOUSs whose run ended (succeeded or failed) per hour since the campaign
began; the ETA is the MOUSs still running or waiting at that rate. Failed and too large MOUSs
are not in the ETA (failed ones are retried by the feeder until parked; parked and too large
ones need someone: the cause fixed, a bigger budget).

Plain dicts and lists in, plain numbers out: no Airflow here (ui_app reads the database).
"""
from __future__ import annotations

from datetime import datetime

BULK_DAG_ID = "alma_bulk_reprocess"
KINDS = ("start", "skipped", "deferred", "parked", "too_large")
STATES = ("done", "running", "waiting", "failed", "parked", "too_large")


def _dt(v) -> datetime | None:
    if v is None or isinstance(v, datetime):
        return v
    return datetime.fromisoformat(str(v).replace("Z", "+00:00"))


def _asked_at(run: dict) -> datetime | None:
    # When the run was asked for, not when a slot freed up: a run the campaign triggered
    # may wait in the queue, and it is still the campaign's.
    for key in ("run_after", "queued_at", "start_date"):
        if run.get(key):
            return _dt(run[key])
    return None


def worklist(summary: dict | None) -> dict:
    """{mous_uid: "start" | "skipped" | "deferred" | "too_large"} of a plan summary, in the plan's order."""
    out: dict = {}
    for kind in KINDS:
        for e in (summary or {}).get(kind) or []:
            uid = e.get("mous_uid") if isinstance(e, dict) else e
            if uid:
                out.setdefault(uid, kind)
    return out


def campaign_runs(bulk_runs: list) -> list:
    """The bulk runs of the latest worklist, latest first: the latest run with a summary and
    the unbroken line of runs before it whose summary lists the same MOUSs.

    `bulk_runs` are {"run_id", "began", "summary"}, latest first. A run without a summary
    (its plan still running, or failed before deciding) neither belongs nor breaks the line.
    """
    chain, mouss = [], None
    for b in bulk_runs:
        work = worklist(b.get("summary")) if b.get("summary") else None
        if not work:
            continue
        if mouss is None:
            mouss = set(work)
        elif set(work) != mouss:
            break  # an earlier campaign, or the worklist was edited: a new campaign began
        chain.append(b)
    return chain


def progress(summary: dict, rows: list, began, now) -> dict:
    """The campaign's counts, throughput and ETA.

    rows: one per MOUS, {"mous_uid", "history": [run, ...]} with each run's "state" and
    ISO or datetime "run_after"/"queued_at"/"start_date"/"end_date" (ui_app.run_rows' shape).
    """
    began, now = _dt(began), _dt(now)
    work = worklist(summary)
    latest: dict = {}
    for row in rows:
        mous = row.get("mous_uid")
        if mous not in work:
            continue
        for run in row.get("history") or []:
            at = _asked_at(run)
            # Runs from before the campaign say nothing about it (an old failure is not its failure).
            if at is None or at < began:
                continue
            if mous not in latest or at > latest[mous][0]:
                latest[mous] = (at, run)
    by_state: dict = {s: [] for s in STATES}
    finished, last_end = 0, None
    for mous, kind in work.items():
        run = latest.get(mous, (None, None))[1]
        state = (run or {}).get("state")
        if kind == "skipped" or state == "success":
            s = "done"
        elif kind == "parked" and state not in ("queued", "running"):
            s = "parked"  # failed again and again: the feeder holds it until forced
        elif state == "failed":
            s = "failed"
        elif run is not None:
            s = "running"
        elif kind == "too_large":
            s = "too_large"
        else:
            s = "waiting"
        by_state[s].append(mous)
        if state in ("success", "failed"):
            finished += 1
            end = _dt(run.get("end_date"))
            if end and (last_end is None or end > last_end):
                last_end = end
    remaining = len(by_state["running"]) + len(by_state["waiting"])
    # Once nothing remains the campaign's clock stops at its last finish: the rate it
    # worked at does not decay while it sits complete.
    until = now if remaining or last_end is None else min(max(last_end, began), now)
    elapsed_s = max((until - began).total_seconds(), 0.0)
    rate = finished / (elapsed_s / 3600) if finished and elapsed_s > 0 else None
    if remaining == 0:
        eta_s = 0.0
    else:
        eta_s = round(remaining / rate * 3600, 1) if rate else None
    return {
        "total": len(work), **{s: len(v) for s, v in by_state.items()},
        "remaining": remaining, "finished": finished, "complete": remaining == 0,
        "began": began.isoformat(timespec="seconds"), "elapsed_s": round(elapsed_s, 1),
        "throughput_per_h": round(rate, 2) if rate is not None else None, "eta_s": eta_s,
        "percent_done": round(100 * len(by_state["done"]) / len(work), 1) if work else 0.0,
        "failed_mous": by_state["failed"],
        "too_large_mous": by_state["too_large"],
        "parked_mous": [{"mous_uid": e.get("mous_uid"), "why": e.get("why")}
                        for e in summary.get("parked") or [] if e.get("mous_uid") in by_state["parked"]],
        "attempts": {m: a for m, a in (summary.get("attempts") or {}).items() if m in work},
    }


def summarize(bulk_runs: list, rows: list, now) -> dict | None:
    """progress() of the latest worklist, with its bulk runs; None when no bulk run decided yet."""
    chain = campaign_runs(bulk_runs)
    if not chain:
        return None
    began = min(_dt(b["began"]) for b in chain)
    out = progress(chain[0]["summary"], rows, began, now)
    out.update(bulk_run_id=chain[0]["run_id"], bulk_runs=len(chain), first_bulk_run_id=chain[-1]["run_id"])
    return out
