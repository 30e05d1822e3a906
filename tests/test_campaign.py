"""The campaign panel's arithmetic (alma_regen.campaign): counts, progress, throughput, ETA.

Every expected number below is worked out by hand from the case's times (T0 = the campaign's
start; runs and bulk runs are placed in hours and minutes after it).
"""
from datetime import datetime, timedelta, timezone

import pytest

from alma_regen.campaign import campaign_runs, progress, summarize, worklist

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
A, B, C, D, E, X = (f"uid://A001/X1/X{n}" for n in "abcdex")


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def plan(start=(), skipped=(), deferred=(), too_large=()) -> dict:
    return {"start": [{"mous_uid": m, "why": "changed"} for m in start],
            "skipped": [{"mous_uid": m, "why": "published"} for m in skipped],
            "deferred": [{"mous_uid": m, "why": "cap"} for m in deferred],
            "too_large": [{"mous_uid": m, "why": "needs 99 GB, the budget is 50 GB"} for m in too_large],
            "attempted_before_unpublished": []}


def run(state, asked, end=None, key="run_after") -> dict:
    return {"state": state, key: at(asked), "end_date": at(end) if end is not None else None}


def rows(**history) -> list:
    uids = {"A": A, "B": B, "C": C, "D": D, "E": E, "X": X}
    return [{"mous_uid": uids[k], "history": v} for k, v in history.items()]


CASES = [
    # id, summary, rows, now (minutes after T0), expected
    ("mid-campaign",
     plan(start=[A, B], skipped=[C], deferred=[D, E]),
     # A done at 1 h, B running, D's failure is from before the campaign (ignored: D waits),
     # X is not in the worklist (ignored).
     rows(A=[run("success", 10, 60)], B=[run("running", 10)], D=[run("failed", -60, -30)],
          X=[run("success", 5, 20)]),
     120,
     # 1 finished in 2 h = 0.5/h; 3 remaining (B, D, E) at 0.5/h = 6 h.
     {"total": 5, "done": 2, "running": 1, "waiting": 2, "failed": 0, "finished": 1, "remaining": 3,
      "complete": False, "elapsed_s": 7200.0, "throughput_per_h": 0.5, "eta_s": 21600.0,
      "percent_done": 40.0, "failed_mous": []}),
    ("nothing finished yet",
     plan(start=[A], deferred=[B]),
     # Only queued_at on a run still in the queue (as ui_app.run_rows gives it).
     rows(A=[run("queued", 1, key="queued_at")]),
     30,
     {"total": 2, "done": 0, "running": 1, "waiting": 1, "failed": 0, "finished": 0, "remaining": 2,
      "complete": False, "elapsed_s": 1800.0, "throughput_per_h": None, "eta_s": None,
      "percent_done": 0.0, "failed_mous": []}),
    ("the latest run decides, complete",
     plan(start=[A, B]),
     # A failed then succeeded; B succeeded then failed (history given in no particular order).
     rows(A=[run("failed", 5, 20), run("success", 30, 90)], B=[run("failed", 100, 120), run("success", 5, 50)]),
     180,
     # Complete: the clock stops at the last finish (B at 2 h): 2 finished in 2 h = 1/h, not 2 in 3 h.
     {"total": 2, "done": 1, "running": 0, "waiting": 0, "failed": 1, "finished": 2, "remaining": 0,
      "complete": True, "elapsed_s": 7200.0, "throughput_per_h": 1.0, "eta_s": 0.0,
      "percent_done": 50.0, "failed_mous": [B]}),
    ("an old success is not the campaign's",
     plan(start=[B], skipped=[A]),
     # A is done as published (no run needed); B's success is from before the campaign.
     rows(B=[run("success", -120, -60)]),
     60,
     {"total": 2, "done": 1, "running": 0, "waiting": 1, "failed": 0, "finished": 0, "remaining": 1,
      "complete": False, "elapsed_s": 3600.0, "throughput_per_h": None, "eta_s": None,
      "percent_done": 50.0, "failed_mous": []}),
    ("three finished in 90 minutes",
     plan(start=[A, B, C], deferred=[D, E]),
     rows(A=[run("success", 0, 30)], B=[run("success", 0, 45)], C=[run("failed", 0, 10)], D=[run("running", 60)]),
     90,
     # 3 finished in 1.5 h = 2/h; 2 remaining (D running, E waiting) at 2/h = 1 h.
     {"total": 5, "done": 2, "running": 1, "waiting": 1, "failed": 1, "finished": 3, "remaining": 2,
      "complete": False, "elapsed_s": 5400.0, "throughput_per_h": 2.0, "eta_s": 3600.0,
      "percent_done": 40.0, "failed_mous": [C]}),
    ("too large for the budget",
     plan(start=[A], too_large=[B, C]),
     # B and C never fit the budget: in the worklist, never started, not in the ETA; A done in 1 h.
     rows(A=[run("success", 0, 60)]),
     60,
     {"total": 3, "done": 1, "running": 0, "waiting": 0, "failed": 0, "too_large": 2, "finished": 1,
      "remaining": 0, "complete": True, "eta_s": 0.0, "percent_done": 33.3, "too_large_mous": [B, C]}),
]


@pytest.mark.parametrize("summary,history,now,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_progress(summary, history, now, expected):
    got = progress(summary, history, T0, T0 + timedelta(minutes=now))
    assert {k: got[k] for k in expected} == expected
    assert got["began"] == "2026-01-01T00:00:00+00:00"
    assert got["done"] + got["running"] + got["waiting"] + got["failed"] + got["too_large"] == got["total"]


def test_progress_reads_iso_times_with_z_and_datetimes():
    history = [{"mous_uid": A, "history": [{"state": "success", "run_after": "2026-01-01T00:10:00Z",
                                            "end_date": T0 + timedelta(hours=1)}]}]
    got = progress(plan(start=[A, B]), history, "2026-01-01T00:00:00+00:00", "2026-01-01T04:00:00Z")
    # 1 finished in 4 h = 0.25/h; B remaining: 4 h.
    assert (got["done"], got["waiting"], got["throughput_per_h"], got["eta_s"]) == (1, 1, 0.25, 14400.0)


def test_worklist_keeps_the_plan_order_and_the_first_kind():
    summary = {"start": [{"mous_uid": B}], "skipped": [{"mous_uid": B}, {"mous_uid": A}], "deferred": [C]}
    got = worklist(summary)
    assert got == {B: "start", A: "skipped", C: "deferred"} and list(got) == [B, A, C]
    assert worklist(None) == {} and worklist({}) == {}


def bulk(run_id, day, *mouss) -> dict:
    return {"run_id": run_id, "began": T0 + timedelta(days=day), "summary": plan(start=mouss) if mouss else None}


@pytest.mark.parametrize("runs,expected", [
    # The plan of the latest run still running: the line is the runs before it.
    ([bulk("b3", 3), bulk("b2", 2, A, B), bulk("b1", 1, B, A), bulk("b0", 0, A)], ["b2", "b1"]),
    # A run without a summary between two of the same worklist does not break the line.
    ([bulk("b2", 2, A), bulk("x", 1), bulk("b1", 0, A)], ["b2", "b1"]),
    # The worklist grew: a new campaign.
    ([bulk("b2", 2, A, B, C), bulk("b1", 1, A, B)], ["b2"]),
    ([bulk("x", 0)], []),
    ([], []),
], ids=["plan-running", "gap", "new-worklist", "no-summary", "no-bulk-run"])
def test_campaign_runs(runs, expected):
    assert [b["run_id"] for b in campaign_runs(runs)] == expected


def test_summarize_starts_the_clock_at_the_first_bulk_run_of_the_worklist():
    runs = [bulk("b3", 2, A, B, C), bulk("b2", 1, A, B, C), bulk("b1", 0, A, B, C), bulk("old", -5, A)]
    # b1 (T0) began the campaign: A's run on day 0 counts, and 1 finished in 48 h.
    history = rows(A=[run("success", 60, 120)], B=[run("running", 24 * 60)])
    got = summarize(runs, history, T0 + timedelta(days=2))
    assert (got["bulk_run_id"], got["first_bulk_run_id"], got["bulk_runs"]) == ("b3", "b1", 3)
    assert got["began"] == "2026-01-01T00:00:00+00:00" and got["elapsed_s"] == 172800.0
    assert (got["done"], got["running"], got["waiting"]) == (1, 1, 1)
    # 1/48 per hour; 2 remaining at that rate = 96 h.
    assert got["throughput_per_h"] == round(1 / 48, 2) and got["eta_s"] == 96 * 3600.0
    assert summarize([bulk("x", 0)], history, T0) is None and summarize([], [], T0) is None


def test_a_parked_mous_is_neither_failed_nor_remaining_and_says_why():
    summary = plan(start=[A], deferred=[B])
    summary["parked"] = [{"mous_uid": C, "why": "3 failed runs in a row (the last, r3: restore_eb: boom)"}]
    summary["attempts"] = {C: {"failures": 3, "error": "restore_eb: boom"}, X: {"failures": 1, "error": "x"}}
    # C's last run in the campaign failed; the latest plan parked it.
    p = progress(summary, rows(A=[run("success", 1, 30)], C=[run("failed", 2, 20)]), T0, T0 + timedelta(hours=1))
    assert (p["parked"], p["failed"], p["done"], p["waiting"], p["remaining"]) == (1, 0, 1, 1, 1)
    assert p["parked_mous"] == [{"mous_uid": C, "why": summary["parked"][0]["why"]}]
    assert p["attempts"] == {C: {"failures": 3, "error": "restore_eb: boom"}}  # X is not in the worklist
    # Forced and running again: running, not parked.
    p = progress(summary, rows(C=[run("failed", 2, 20), run("running", 40)]), T0, T0 + timedelta(hours=1))
    assert p["running"] == 1 and p["parked"] == 0 and p["parked_mous"] == []
