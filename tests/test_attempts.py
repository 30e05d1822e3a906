"""A MOUS that keeps failing is parked (issue 13 item 4): counted per run, parked after N
failed runs in a row, held by the feeder until forced; and the feeder, run again (a new
pass after a scheduler restart), never starts a MOUS twice.

The end of a run as Airflow records it (release_mous with real task states, the failing
task's error through the listener) is tested in test_dags (permanent and transient faults).
"""
import json
import multiprocessing
from datetime import datetime, timezone

import pytest

from alma_regen import admission, attempts
from alma_regen.bulk import decide, plan_bulk
from alma_regen.naming import run_id
from archive_builder import build_archive

MOUS = "uid://A001/X2100/X1a"
OTHER = "uid://A001/X2200/X2a"
ASDM = "uid___A002_Xc1000_X1.asdm.sdm.tar"


def test_failed_runs_in_a_row_park_the_mous_and_a_success_clears_them(tmp_path):
    attempts.note_error(tmp_path, MOUS, "r1", "restore_eb", RuntimeError("CASA died\ntraceback ..."))
    rec = attempts.record_end(tmp_path, MOUS, "r1", failed=True, seconds=12.34, nbytes=10, max_attempts=3, now=1.0)
    assert rec["failures"] == 1 and "parked" not in rec
    assert rec["runs"] == [{"run_id": "r1", "outcome": "failed", "ended": 1.0, "seconds": 12.3, "bytes": 10,
                            "error": "restore_eb: RuntimeError: CASA died"}]
    # Recorded twice (a retried teardown): counted once.
    assert attempts.record_end(tmp_path, MOUS, "r1", failed=True, max_attempts=3)["failures"] == 1
    # An error noted by another run is not this run's reason.
    attempts.note_error(tmp_path, MOUS, "r-other", "stage_asdm", "x")
    assert attempts.record_end(tmp_path, MOUS, "r2", failed=True, max_attempts=3)["runs"][-1]["error"] == \
        "a task failed"
    rec = attempts.record_end(tmp_path, MOUS, "r3", failed=True, max_attempts=3)
    assert rec["failures"] == 3 and rec["parked"]["why"].startswith("3 failed runs in a row (the last, r3: ")
    assert attempts.parked(attempts.records(tmp_path)) == {MOUS: rec["parked"]["why"]}
    # An operator's run that works clears the count and the parking.
    rec = attempts.record_end(tmp_path, MOUS, "r4", failed=False, max_attempts=3)
    assert rec["failures"] == 0 and "parked" not in rec and attempts.parked(attempts.records(tmp_path)) == {}
    # max_attempts 0: counted, never parked.
    for n in range(5):
        rec = attempts.record_end(tmp_path, OTHER, f"o{n}", failed=True, max_attempts=0)
    assert rec["failures"] == 5 and "parked" not in rec
    assert len(attempts.records(tmp_path)[OTHER]["runs"]) == 5


def test_only_the_last_runs_are_kept(tmp_path):
    for n in range(attempts.RUNS_KEPT + 5):
        attempts.record_end(tmp_path, MOUS, f"r{n}", failed=False)
    runs = attempts.records(tmp_path)[MOUS]["runs"]
    assert [r["run_id"] for r in runs] == [f"r{n}" for n in range(5, attempts.RUNS_KEPT + 5)]


def _fail(args):
    workdir, n = args
    return attempts.record_end(workdir, MOUS, f"run{n}", failed=True, max_attempts=0)["failures"]


def test_concurrent_ends_from_processes_are_all_counted(tmp_path):
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        pool.map(_fail, [(str(tmp_path), n) for n in range(18)])
    assert attempts.records(tmp_path)[MOUS]["failures"] == 18


def test_a_corrupt_attempts_file_is_set_aside(tmp_path):
    attempts.path_of(tmp_path).write_text("{not json")
    assert attempts.records(tmp_path) == {}
    assert attempts.record_end(tmp_path, MOUS, "r1", failed=True)["failures"] == 1
    assert (tmp_path / ".attempts.json.corrupt").read_text() == "{not json"


def test_decide_holds_a_parked_mous_unless_forced(tmp_path):
    kw = dict(list_files=lambda m: {ASDM: 10**9}, manifest_of=lambda m: None, casa_version="6.7.0-31",
              workdir=tmp_path, budget_bytes=10**12, ledger={}, max_in_flight=10, footprint_factor=11,
              parked={MOUS: "3 failed runs in a row"})
    entries = [{"mous_uid": MOUS, "force": False}, {"mous_uid": OTHER, "force": False}]
    d = decide(entries, force_all=False, **kw)
    assert [e["mous_uid"] for e in d["start"]] == [OTHER]
    assert d["parked"] == [{"mous_uid": MOUS, "why": "3 failed runs in a row"}]
    # Forced by its entry, or all forced: started, marked to be unparked.
    d = decide([{"mous_uid": MOUS, "force": True}], force_all=False, **kw)
    assert d["parked"] == [] and d["start"][0]["mous_uid"] == MOUS and d["start"][0]["unpark"] is True
    d = decide(entries, force_all=True, **kw)
    assert d["parked"] == [] and len(d["start"]) == 2


@pytest.fixture
def archive(tmp_path, archive_server):
    root = tmp_path / "archive"
    for n, mous in enumerate((MOUS, OTHER), 1):
        build_archive(root, mous=mous, ebs=(f"uid://A002/Xc{n}000/X1",), n_binaries=1, binary_size=1024)
    return archive_server(root)


def _plan(tmp_path, server, worklist, when, **kw):
    from alma_regen.staging.sources import open_source
    return plan_bulk(str(worklist), source_for=lambda: open_source(server.url), products_url="",
                     products_client=None, casa_version="6.7.0-31", force_all=False, workdir=tmp_path / "work",
                     run_id_for=lambda m: run_id(m, when, prefix="bulk"), budget_gb=100, min_free_gb=0,
                     max_in_flight=10, footprint_factor=11, **kw)


def test_the_feeder_reports_a_parked_mous_and_a_forced_entry_unparks_it(tmp_path, archive):
    work = tmp_path / "work"
    for n in range(3):
        attempts.record_end(work, MOUS, f"r{n}", failed=True, max_attempts=3)
    worklist = tmp_path / "worklist.txt"
    worklist.write_text(f"{MOUS}\n{OTHER}\n")
    t1 = datetime(2026, 11, 24, 1, 0, tzinfo=timezone.utc)
    d = _plan(tmp_path, archive, worklist, t1)
    assert [e["mous_uid"] for e in d["start"]] == [OTHER]
    assert [e["mous_uid"] for e in d["parked"]] == [MOUS] and "parked until forced" in d["parked"][0]["why"]
    assert d["attempts"][MOUS]["failures"] == 3 and d["attempts"][MOUS]["error"] == "a task failed"
    # Still parked on the next pass; forced, it starts and is parked no more.
    t2 = datetime(2026, 11, 24, 1, 15, tzinfo=timezone.utc)
    assert [e["mous_uid"] for e in _plan(tmp_path, archive, worklist, t2)["parked"]] == [MOUS]
    worklist.write_text(json.dumps([{"mous_uid": MOUS, "force": True}, OTHER]))
    t3 = datetime(2026, 11, 24, 1, 30, tzinfo=timezone.utc)
    d = _plan(tmp_path, archive, worklist, t3)
    assert [e["mous_uid"] for e in d["start"]] == [MOUS] and d["parked"] == []
    assert "unpark" not in d["start"][0]
    assert attempts.records(work)[MOUS]["failures"] == 0 and attempts.parked(attempts.records(work)) == {}


def test_the_feeder_after_a_restart_never_starts_a_mous_twice(tmp_path, archive):
    """Pass 1 reserves and (its trigger task) starts both; the scheduler restarts; pass 2 is
    a new bulk run (new run ids): the ledger says both are in flight, nothing starts again.
    A retry of pass 1 (same run ids) finds its own reservations and decides the same."""
    worklist = tmp_path / "worklist.txt"
    worklist.write_text(f"{MOUS}\n{OTHER}\n")
    t1 = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)
    first = _plan(tmp_path, archive, worklist, t1)
    assert sorted(e["mous_uid"] for e in first["start"]) == sorted([MOUS, OTHER])
    assert _plan(tmp_path, archive, worklist, t1)["start"] == first["start"]  # a retried pass
    t2 = datetime(2026, 11, 24, 2, 15, tzinfo=timezone.utc)
    second = _plan(tmp_path, archive, worklist, t2)
    assert second["start"] == []
    assert sorted(e["why"] for e in second["deferred"]) == sorted(f"in flight: run {e['run_id']}"
                                                                   for e in first["start"])
    assert len(admission.entries(tmp_path / "work")) == 2
