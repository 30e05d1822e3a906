"""Disk admission by reservation (alma_regen/admission.py): real files, real processes."""
import json
import logging
import multiprocessing
import os

from alma_regen import admission
from alma_regen.admission import GB, admit, footprint

A, B, C, D = (f"uid://A001/X1/X{n}" for n in "abcd")


def cand(mous, gb):
    return {"mous_uid": mous, "why": "not published", "bytes": int(gb * GB)}


def names(items):
    return [e["mous_uid"] for e in items]


# ------------------------------------------------------------------ footprint
def test_footprint_is_factor_times_the_asdms_plus_the_rest_once():
    files = {"2019.1.00001.S_uid___A002_X1_X1.asdm.sdm.tar": 2 * 10**9,
             "2019.1.00001.S_uid___A002_X1_X2.asdm.sdm.tar": 10**9,
             "2019.1.00001.S_uid___A001_X1_Xa_auxiliary.tar": 10**6,
             "member.uid___A001_X1_Xa.README.txt": 1000,
             "2019.1.00001.S_uid___A001_X1_Xa_001_of_001.tar": -1}  # size unknown to the archive: 0
    assert footprint(files, 11) == 33 * 10**9 + 10**6 + 1000
    assert footprint(files, 7) == 21 * 10**9 + 10**6 + 1000


# ------------------------------------------------------------------ admit
def test_admit_starts_what_fits():
    start, deferred, too_large = admit([cand(A, 10), cand(B, 20)], budget_bytes=100 * GB, reserved_bytes=0,
                                       in_flight=0, max_in_flight=4)
    assert names(start) == [A, B] and deferred == [] and too_large == []


def test_admit_defers_when_the_budget_is_exhausted_and_lets_smaller_ones_past():
    # 100 GB budget, 50 reserved by runs in flight: A (30) fits, B (30) no longer, C (15) does.
    start, deferred, too_large = admit([cand(A, 30), cand(B, 30), cand(C, 15)], budget_bytes=100 * GB,
                                       reserved_bytes=50 * GB, in_flight=1, max_in_flight=10)
    assert names(start) == [A, C] and names(deferred) == [B] and too_large == []
    assert deferred[0]["why"] == "needs 30.0 GB, 20.0 GB of the 100.0 GB budget is free of reservations"


def test_admit_stops_at_the_in_flight_cap():
    # Two in flight, a cap of three: one more starts, the rest wait for a slot.
    start, deferred, _ = admit([cand(A, 1), cand(B, 1), cand(C, 1)], budget_bytes=100 * GB, reserved_bytes=0,
                               in_flight=2, max_in_flight=3)
    assert names(start) == [A] and names(deferred) == [B, C]
    assert all(d["why"] == "3 runs in flight, the cap is 3" for d in deferred)


def test_admit_reports_a_mous_larger_than_the_whole_budget_and_never_starts_it():
    # Even with nothing reserved and no run in flight, 120 GB never fits a 100 GB budget.
    start, deferred, too_large = admit([cand(A, 120), cand(B, 10)], budget_bytes=100 * GB, reserved_bytes=0,
                                       in_flight=0, max_in_flight=4)
    assert names(start) == [B] and deferred == []
    assert too_large == [{**cand(A, 120), "why": "needs 120.0 GB, the budget is 100.0 GB"}]
    # ... and it is too large, not deferred, when the cap is reached too: waiting would not help.
    _, deferred, too_large = admit([cand(A, 120)], budget_bytes=100 * GB, reserved_bytes=0, in_flight=4,
                                   max_in_flight=4)
    assert deferred == [] and names(too_large) == [A]


def test_admit_keeps_the_worklist_order():
    order = [cand(D, 1), cand(B, 1), cand(A, 1), cand(C, 1)]
    start, deferred, _ = admit(order, budget_bytes=100 * GB, reserved_bytes=0, in_flight=0, max_in_flight=2)
    assert names(start) == [D, B] and names(deferred) == [A, C]


# ------------------------------------------------------------------ the ledger
def test_reserve_release_and_totals(tmp_path):
    assert admission.reserved(tmp_path) == 0 and admission.entries(tmp_path) == {}
    assert admission.reserve(tmp_path, "r1", A, 5 * GB)
    assert admission.reserve(tmp_path, "r2", B, 7 * GB)
    assert admission.reserve(tmp_path, "r1", A, 99 * GB)  # held already: kept as it was
    assert admission.reserved(tmp_path) == 12 * GB
    assert {r: e["mous_uid"] for r, e in admission.entries(tmp_path).items()} == {"r1": A, "r2": B}
    doc = json.loads((tmp_path / ".ledger.json").read_text())
    assert doc["runs"]["r2"]["bytes"] == 7 * GB and doc["schema"] == admission.SCHEMA
    assert admission.release(tmp_path, "r1") is True
    assert admission.release(tmp_path, "r1") is False  # idempotent: a teardown retried
    assert admission.release(tmp_path / "nowhere", "r1") is False
    assert admission.reserved(tmp_path) == 7 * GB


def test_reserve_with_limits_refuses_past_the_budget_or_the_cap(tmp_path):
    assert admission.reserve(tmp_path, "r1", A, 60, budget_bytes=100, max_in_flight=2)
    assert not admission.reserve(tmp_path, "r2", B, 50, budget_bytes=100, max_in_flight=2)  # 110 > 100
    assert admission.reserve(tmp_path, "r3", C, 40, budget_bytes=100, max_in_flight=2)
    assert not admission.reserve(tmp_path, "r4", D, 0, budget_bytes=100, max_in_flight=2)  # cap of 2
    assert sorted(admission.entries(tmp_path)) == ["r1", "r3"]


def test_a_corrupt_or_empty_ledger_is_set_aside_with_a_warning(tmp_path, caplog):
    ledger = tmp_path / ".ledger.json"
    for bad in ("", '{"runs": [1, 2', '["not", "a", "ledger"]'):
        ledger.write_text(bad)
        with caplog.at_level(logging.WARNING, logger="alma_regen"):
            assert admission.reserved(tmp_path) == 0
        assert "started afresh" in caplog.text
        assert (tmp_path / ".ledger.json.corrupt").read_text() == bad
        caplog.clear()
        assert admission.reserve(tmp_path, "r1", A, 3)
        assert [(r, e["mous_uid"], e["bytes"]) for r, e in admission.entries(tmp_path).items()] == [("r1", A, 3)]
        admission.release(tmp_path, "r1")
    # One malformed entry among good ones: only it is dropped.
    ledger.write_text(json.dumps({"runs": {"ok": {"mous_uid": A, "bytes": 5, "since": 1.0},
                                           "bad": {"mous_uid": B, "bytes": "lots"}}}))
    assert list(admission.entries(tmp_path)) == ["ok"]


def test_forget_except_drops_only_runs_no_longer_active(tmp_path):
    for run, mous in (("r1", A), ("r2", B), ("r3", C)):
        admission.reserve(tmp_path, run, mous, 1)
    assert admission.forget_except(tmp_path, ["r2"], among={"r1", "r2"}) == ["r1"]  # r3 was not asked about
    assert sorted(admission.entries(tmp_path)) == ["r2", "r3"]
    assert admission.forget_except(tmp_path, ["r3"]) == ["r2"]
    assert sorted(admission.entries(tmp_path)) == ["r3"]


def test_forget_stale_by_the_run_states(tmp_path):
    now = 1_000_000.0
    ledger = {"running": 10, "queued": 10, "success": 10, "failed": 10, "missing-new": 60,
              "missing-old": 3600, "unknown-new": 86400, "unknown-old": 8 * 86400}
    (tmp_path / ".ledger.json").write_text(json.dumps({"runs": {
        r: {"mous_uid": A, "bytes": 1, "since": now - age} for r, age in ledger.items()}}))
    states = {"running": "running", "queued": "queued", "success": "success", "failed": "failed",
              "missing-new": "missing", "missing-old": "missing", "unknown-new": None, "unknown-old": None}
    gone = dict(admission.forget_stale(tmp_path, states.get, now=now))
    assert sorted(gone) == ["failed", "missing-old", "success", "unknown-old"]
    assert gone["failed"] == "the run is failed"
    assert sorted(admission.entries(tmp_path)) == ["missing-new", "queued", "running", "unknown-new"]


def test_disk_budget_set_or_derived_from_the_disk(tmp_path):
    assert admission.disk_budget(tmp_path, budget_gb=2.5, min_free_gb=50) == int(2.5 * GB)
    free = lambda: __import__("shutil").disk_usage(tmp_path).free  # noqa: E731
    derived = admission.disk_budget(tmp_path, budget_gb=0, min_free_gb=0)
    assert abs(derived - free()) < 50 * 10**6
    # A run in flight that has written 8 MB of its 20 MB reservation: the 8 MB it uses is
    # counted back into the budget (it is part of what runs may use), the 12 MB still to come is
    # not free: admit() then sees budget - reserved = free - 12 MB.
    member = tmp_path / "member.uid___A001_X1_Xa"
    member.mkdir()
    (member / "written").write_bytes(os.urandom(8 * 10**6))
    admission.reserve(tmp_path, "r1", A, 20 * 10**6)
    before = free()
    derived = admission.disk_budget(tmp_path, budget_gb=0, min_free_gb=0)
    assert abs(derived - (before + 8 * 10**6)) < 10**6
    assert admission.disk_budget(tmp_path, budget_gb=0, min_free_gb=1e9) == 0  # never negative


# ------------------------------------------------------------------ concurrency
def _reserve_one(args):
    workdir, n = args
    return admission.reserve(workdir, f"run{n}", f"uid://A001/X1/X{n:x}", (n + 1) * 1000)


def _reserve_within(args):
    workdir, n = args
    return admission.reserve(workdir, f"run{n}", f"uid://A001/X1/X{n:x}", 10, budget_bytes=55, max_in_flight=100)


def test_concurrent_reservations_from_processes_all_land(tmp_path):
    n = 24
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        assert all(pool.map(_reserve_one, [(str(tmp_path), i) for i in range(n)]))
    runs = admission.entries(tmp_path)
    assert len(runs) == n and admission.reserved(tmp_path) == sum((i + 1) * 1000 for i in range(n))


def test_concurrent_starts_never_reserve_past_the_budget(tmp_path):
    # 24 processes race for a 55-byte budget at 10 bytes each: exactly 5 win.
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        won = pool.map(_reserve_within, [(str(tmp_path), i) for i in range(24)])
    assert sum(won) == 5 and len(admission.entries(tmp_path)) == 5 and admission.reserved(tmp_path) == 50
