"""bench/campaign_sim.py: a small campaign through the real feeder decision and ledger keeps its promises."""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import campaign_sim  # noqa: E402

SMALL = ["--mous", "60", "--seed", "3", "--workers", "4", "--max-in-flight", "8"]


@pytest.fixture(scope="module")
def tight():
    """60 MOUSs on a 1 TB budget (their footprints are ~0.3 TB on average, so most passes defer
    some), one of them made larger than the whole budget."""
    return campaign_sim.main(SMALL + ["--budget-tb", "1", "--too-large", "1"])


def test_reservations_never_exceed_the_budget_and_the_disk_follows_them(tight):
    assert 0.5 < tight["peak_reserved_over_budget"] <= 1.0   # the budget binds, and holds
    # keep=nothing: a run's real disk stays below its reservation, and nothing is left behind.
    assert tight["peak_actual_over_budget"] <= tight["peak_reserved_over_budget"]
    assert tight["ledger_entries_left"] == 0


def test_every_mous_that_fits_is_published_once_and_the_too_large_one_never_starts(tight):
    assert tight["too_large"] >= 1 and tight["too_large_started"] == 0
    assert tight["unfinished"] == 0
    assert tight["published"] == tight["mous"] - tight["too_large"]
    # decide() skipped each published MOUS through reuse.same_as_published (the last may end the campaign first).
    assert tight["skipped_as_published"] >= tight["published"] - 1


def test_the_figures_are_sane(tight):
    assert 0 < tight["utilisation"] <= 1
    assert tight["campaign_over_ideal"] >= 1
    assert tight["feeder_passes"] >= tight["passes_decided"] > 0
    assert tight["refused_reservations"] == 0   # one feeder, nobody reserves between decide and reserve


def test_skipping_passes_where_no_run_ended_changes_nothing(tight):
    every = campaign_sim.main(SMALL + ["--budget-tb", "1", "--too-large", "1", "--decide-every-pass"])
    assert every["passes_decided"] == every["feeder_passes"]
    # attempted_before_unpublished is of the last pass decided: a run's start (its step file) changes it.
    same = ("passes_decided", "sim_wall_s", "attempted_before_unpublished")
    assert {k: v for k, v in every.items() if k not in same} == {k: v for k, v in tight.items() if k not in same}


def test_poison_mouss_are_parked_after_three_failed_runs_and_the_rest_finishes():
    r = campaign_sim.main(SMALL + ["--budget-tb", "3", "--fail-rate", "0.05"])
    assert r["poison_mous"] == 3 and r["parked"] == 3 and r["failed_runs"] == 3 * 3
    assert not r["stalled"] and r["unfinished"] == 0
    assert r["published"] == r["mous"] - r["poison_mous"] - r["too_large"]


def test_without_parking_poison_mouss_starve_a_large_mous_and_with_it_they_do_not():
    # Never parked (max attempts 0): on a tight budget the poison MOUSs, earlier in the
    # worklist, are reserved again on every pass ahead of a large MOUS that then never fits.
    # The simulation stops and says so instead of running on.
    tight_poison = SMALL + ["--budget-tb", "1", "--fail-rate", "0.05", "--stall-days", "3"]
    r = campaign_sim.main(tight_poison + ["--max-attempts", "0"])
    assert r["stalled"] and r["unfinished"] >= 1 and r["parked"] == 0
    assert r["peak_reserved_over_budget"] <= 1.0
    r = campaign_sim.main(tight_poison)  # parked after 3 (the default)
    assert not r["stalled"] and r["unfinished"] == 0 and r["parked"] == r["poison_mous"]


def test_a_budget_from_the_disk_keeps_kept_raw_data_on_the_disk():
    # keep=raw leaves every published MOUS's raw data: a budget derived from the disk takes it
    # off, so the disk is never overfilled (a fixed budget does not see it).
    r = campaign_sim.main(SMALL + ["--budget-tb", "3", "--budget-from-disk", "--min-free-gb", "0", "--keep", "raw"])
    assert r["unfinished"] == 0
    assert r["peak_actual_over_budget"] <= 1.0
    assert r["lowest_budget_tb"] < 3
