#!/usr/bin/env python
"""A bulk reprocessing campaign, simulated: does the feeder keep the workers busy within the disk budget?

A discrete-event simulation in simulated minutes (nothing sleeps) that drives the package's
REAL decision code, not a copy of it:

  feeder pass   every --pass-min (15, the bulk_schedule default) alma_regen.bulk.decide() is
                called on the whole worklist, with
                  list_files(mous)   a simulated archive listing: one `<...>.asdm.sdm.tar` per
                                     EB (admission.ASDM_SUFFIX), an `_auxiliary.tar` and a README
                  manifest_of(mous)  None until the MOUS is published, then a manifest as publish
                                     writes it (inputs = that listing, the CASA used), so the real
                                     reuse.same_as_published skips it. A MOUS decide() has skipped
                                     so is then dropped from the entries later passes get (the real
                                     feeder keeps asking; here that would only cost time: the
                                     decisions are the same)
                  ledger             admission.entries(workdir) of a real ledger file in a
                                     tempfile.TemporaryDirectory
                and each start reserved with admission.reserve(..., budget_bytes, max_in_flight)
                exactly as plan_bulk does (a refusal is counted, and the MOUS waits for the next
                pass). A run writes the member folder's step file when it starts (decide reports
                such a MOUS as attempted before), which a publish removes.
  a run         admitted runs wait in a FIFO queue for one of --workers workers; a run then takes
                --overhead-min + --min-per-gb x raw GB of one worker (a fixed part: staging,
                setup, publish; a part proportional to the data: importasdm, calibration,
                imaging). When it ends, admission.release() drops its reservation.
  its disk      from the moment it executes, a run's disk grows linearly to its real peak, a
                random fraction (--peak-lo..--peak-hi, 0.6-1.0) of its reservation
                (admission.footprint(files, --factor)); at publish it shrinks to what --keep
                leaves: nothing, or raw (the raw ASDMs, the auxiliary tar and the README stay
                for good). Queued runs use no disk yet (staging is part of the run).
  failures      a fraction --fail-rate of the MOUSs is poison: every run of them fails after
                --fail-after-min. A failed run releases its reservation (its teardown) but its
                member folder stays (no publish, so no cleaning): the disk it had reached stays
                until the MOUS's next run, which starts from it. Every run's end goes through the
                real attempts.record_end (as release_mous does), and each pass gives decide() the
                MOUSs attempts.parked() says: after --max-attempts failed runs in a row (3, the
                setting bulk_max_attempts) a MOUS is parked and no longer started. With
                --max-attempts 0 (never parked) poison MOUSs are started again on every pass and
                can starve a large MOUS for good (they are reserved again ahead of it): after
                --stall-days without a publish the simulation stops and reports it as stalled.
  the budget    fixed (bulk_disk_budget_gb > 0: --budget-tb), or with --budget-from-disk what
                admission.disk_budget derives from a disk of --budget-tb: its free space plus what
                the runs in flight use of their reservations (less --min-free-gb), recomputed at
                every pass: then what keep=raw leaves behind is taken off the budget. The default,
                3 TB, is one where the disk, not the 8 workers, sets the pace (at 20 TB only ~0.4
                of the budget is ever reserved: the in-flight cap binds first).

Sizes (seeded by --seed): 1-10 EBs per MOUS (uniform), each 0.5-20 GB, log-uniform (most
EBs are small, a few large: mean ~5.3 GB, median ~3.2 GB); the auxiliary tar 20-500 MB.
--too-large N makes N MOUSs (at random places in the worklist) larger than the whole budget:
decide must report them too_large and never start them.

Figures: MOUS count, raw TB, worker utilisation (busy worker-time / (workers x campaign
time), failed runs included), peak reserved and peak actual disk / budget, campaign time /
ideal (the successful runs' work / workers), feeder passes, too_large MOUSs, failed runs,
mean wait for a worker (admitted -> executing) and for admission (campaign start -> first
admitted), and the simulation's own wall-clock time. The peak actual disk is exact: the
sum of linear ramps is linear between events, so its maximum is at an event.

    .venv/bin/python bench/campaign_sim.py [--mous 1000] [--seed 1] [--workers 8] [--budget-tb 3]
        [--max-in-flight 16] [--factor 11] [--keep nothing|raw] [--fail-rate 0] [--json OUT]

Note: the setting bulk_max_in_flight defaults to 4, fewer than 8 workers; the default here is
16 (2 x workers) so that admitted runs queue; run with --max-in-flight 4 to see the shipped default.
"""
from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

from alma_regen import admission, attempts, naming  # noqa: E402
from alma_regen.admission import ASDM_SUFFIX, GB  # noqa: E402
from alma_regen.bulk import decide  # noqa: E402
from alma_regen.steps import STEP_FILE  # noqa: E402

TB = 1e12
CASA = "6.6.1-17"                     # the CASA of every (simulated) run: the published one
PROJECT = "2019.1.00001.S"
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)   # simulated time 0, for run ids only
# Events at the same minute: runs end before the feeder passes, so a pass sees what they freed.
END, PASS = 0, 1


# ------------------------------------------------------------------ the campaign's state
@dataclass
class Mous:
    uid: str
    files: dict                 # the archive's listing {name: size}
    raw: int                    # bytes of its ASDMs
    poison: bool
    manifest: dict | None = None
    residue: int = 0            # bytes its member folder keeps between runs (failed, or keep=raw)
    first_admitted: float | None = None
    failures: int = 0


@dataclass
class Run:
    run_id: str
    mous: Mous
    reserved: int
    peak: int                   # the real peak disk, below the reservation
    minutes: float              # worker time it takes (to its failure, for a poison MOUS)
    ramp: float                 # minutes its disk takes to reach the peak (a whole run's)
    fails: bool
    admitted: float
    started: float | None = None
    base: int = 0               # disk at its start (the MOUS's residue)


@dataclass
class Campaign:
    args: argparse.Namespace
    workdir: Path
    mouss: list
    rng: random.Random
    now: float = 0.0
    events: list = field(default_factory=list)      # heap of (minute, kind, seq, run)
    seq: int = 0
    queue: deque = field(default_factory=deque)     # admitted, waiting for a worker
    running: dict = field(default_factory=dict)     # run_id -> Run, on a worker
    flying: dict = field(default_factory=dict)      # run_id -> Run, holding a reservation
    published: int = 0
    too_large: set = field(default_factory=set)
    parked: set = field(default_factory=set)         # MOUSs the real attempts.record_end parked
    passes: int = 0
    skipped: int = 0                                # MOUSs decide() skipped as published
    decided: int = 0                                # passes that called decide()
    changed: bool = True                            # a run ended since the last decide()
    resting: int = 0                                # sum of the MOUSs' residues
    refused: int = 0
    failed_runs: int = 0
    busy: list = field(default_factory=list)        # (start, end) of the runs that ended
    started_uids: set = field(default_factory=set)
    last_publish: float = 0.0
    stalled: bool = False
    worker_waits: list = field(default_factory=list)
    peak_reserved: int = 0
    peak_actual: int = 0
    peak_queued: int = 0
    budget_now: int = 0
    min_budget: int | None = None
    attempted_before: int = 0


# ------------------------------------------------------------------ the simulated archive
def make_mouss(args, rng: random.Random) -> list:
    """The worklist's MOUSs with their archive listings; see the module docstring for the sizes."""
    poison = set(rng.sample(range(args.mous), round(args.fail_rate * args.mous)))
    giants = set(rng.sample(range(args.mous), min(args.too_large, args.mous)))
    out = []
    for i in range(args.mous):
        uid = f"uid://A001/X{0x2000 + i:x}/X{1 + i % 255:x}"
        n_ebs = rng.randint(1, 10)
        if i in giants:  # each EB a share of 1.5 x what the budget can hold at the factor
            sizes = [int(1.5 * args.budget_tb * TB / args.factor / n_ebs)] * n_ebs
        else:
            sizes = [int(GB * math.exp(rng.uniform(math.log(0.5), math.log(20)))) for _ in range(n_ebs)]
        files = {f"{PROJECT}_uid___A002_X{0x5000 + i:x}_X{k + 1:x}{ASDM_SUFFIX}": s for k, s in enumerate(sizes)}
        files[f"{PROJECT}_{naming.uid_to_file(uid)}_auxiliary.tar"] = int(rng.uniform(20e6, 500e6))
        files[f"member.{naming.uid_to_file(uid)}.README.txt"] = 2048
        out.append(Mous(uid=uid, files=files, raw=sum(sizes), poison=i in poison))
    return out


def manifest_for(m: Mous, run_id: str) -> dict:
    """What reuse.same_as_published reads of a published manifest: the inputs as staged and the CASA."""
    return {"mous_uid": m.uid, "run": run_id, "inputs": [{"file": n, "size": s} for n, s in m.files.items()],
            "engines": {"calibration": {"engine": "native", "casa": CASA}}}


def kept_after_publish(m: Mous, keep: str) -> int:
    """What workspace.clean leaves of a published member folder: keep=raw keeps what staging brought."""
    return sum(m.files.values()) if keep == "raw" else 0


# ------------------------------------------------------------------ time and disk
def schedule(c: Campaign, minute: float, kind: int, run: Run | None = None) -> None:
    c.seq += 1
    heapq.heappush(c.events, (minute, kind, c.seq, run))


def disk_of(r: Run, now: float) -> float:
    """A run's disk now: a linear ramp from what its member folder held to its peak."""
    if r.started is None:
        return 0.0
    done = min((now - r.started) / r.ramp, 1.0) if r.ramp > 0 else 1.0
    return r.base + (r.peak - r.base) * done


def actual_disk(c: Campaign, now: float) -> float:
    """All the campaign's bytes on disk: the member folders between runs, and the runs executing."""
    return c.resting - sum(r.base for r in c.running.values()) + sum(disk_of(r, now) for r in c.running.values())


def observe(c: Campaign) -> None:
    """Peaks, taken at every event before it changes anything (the maxima of a piecewise linear sum)."""
    c.peak_actual = max(c.peak_actual, int(actual_disk(c, c.now)))
    c.peak_reserved = max(c.peak_reserved, sum(r.reserved for r in c.flying.values()))
    c.peak_queued = max(c.peak_queued, len(c.queue))


def budget(c: Campaign) -> int:
    """The budget a pass decides with: fixed, or as admission.disk_budget derives it from the disk
    (free space + what the runs in the ledger use of their reservations - min free)."""
    a = c.args
    if not a.budget_from_disk:
        return int(a.budget_tb * TB)
    free = a.budget_tb * TB - actual_disk(c, c.now)
    used = sum(min(disk_of(r, c.now) if r.started is not None else r.mous.residue, r.reserved)
               for r in c.flying.values())
    return max(int(free + used - a.min_free_gb * GB), 0)


# ------------------------------------------------------------------ runs
def new_run(c: Campaign, m: Mous, reserved: int) -> Run:
    a = c.args
    full = a.overhead_min + a.min_per_gb * m.raw / GB
    peak = int(reserved * c.rng.uniform(a.peak_lo, a.peak_hi))
    minutes = min(a.fail_after_min, full) if m.poison else full
    run = Run(run_id=naming.run_id(m.uid, EPOCH + timedelta(minutes=c.now), prefix="bulk"), mous=m,
              reserved=reserved, peak=peak, minutes=minutes, ramp=full, fails=m.poison, admitted=c.now)
    return run


def start_waiting(c: Campaign) -> None:
    """Put queued runs on the free workers, first admitted first."""
    while c.queue and len(c.running) < c.args.workers:
        r = c.queue.popleft()
        r.started, r.base = c.now, r.mous.residue
        c.worker_waits.append(c.now - r.admitted)
        c.running[r.run_id] = r
        c.started_uids.add(r.mous.uid)
        step = c.workdir / naming.member_dir(r.mous.uid) / STEP_FILE
        step.parent.mkdir(parents=True, exist_ok=True)
        step.write_text(json.dumps({"step": "staging", "run_id": r.run_id}))
        schedule(c, c.now + r.minutes, END, r)


def end_run(c: Campaign, r: Run) -> None:
    """The run's teardown: its reservation released; published (and cleaned) or failed."""
    m = r.mous
    admission.release(c.workdir, r.run_id)
    del c.running[r.run_id], c.flying[r.run_id]
    c.busy.append((r.started, c.now))
    c.changed = True
    left = int(disk_of(r, c.now)) if r.fails else kept_after_publish(m, c.args.keep)
    c.resting += left - m.residue
    m.residue = left
    # The teardown records the run's end in the MOUS's attempts (release_mous does the same).
    rec = attempts.record_end(c.workdir, m.uid, r.run_id, failed=r.fails, max_attempts=c.args.max_attempts,
                              now=c.now * 60)
    if r.fails:   # not published, so not cleaned: the folder stays as the run left it
        m.failures += 1
        c.failed_runs += 1
        if rec.get("parked"):
            c.parked.add(m.uid)
    else:
        m.manifest = manifest_for(m, r.run_id)
        (c.workdir / naming.member_dir(m.uid) / STEP_FILE).unlink(missing_ok=True)  # cleaned
        c.published += 1
        c.last_publish = c.now


# ------------------------------------------------------------------ the feeder
def feeder_pass(c: Campaign, entries: list, by_uid: dict) -> None:
    """One pass of the bulk DAG: decide() on the worklist, then reserve what it starts.

    A pass after which no run has ended would decide nothing new: the ledger holds exactly
    the previous pass's starts more, which admit() had already counted against every MOUS it
    deferred; the listings, manifests and the budget (also the one from the disk: a run's
    growth stays within its reservation) change only when a run ends. So such a pass is
    counted but decide() is not called, unless --decide-every-pass (the test checks both
    give the same campaign; only decide()'s attempted_before_unpublished, which a run's start
    changes, is then of an earlier pass); it is what makes a thousand MOUSs take seconds.
    """
    c.passes += 1
    if not (c.changed or c.args.decide_every_pass):
        return
    c.changed = False
    c.decided += 1
    c.budget_now = budget(c)
    c.min_budget = c.budget_now if c.min_budget is None else min(c.min_budget, c.budget_now)
    a = c.args
    result = decide(entries, list_files=lambda u: by_uid[u].files,
                    manifest_of=lambda u: by_uid[u].manifest, casa_version=CASA, force_all=False,
                    workdir=c.workdir, budget_bytes=c.budget_now, ledger=admission.entries(c.workdir),
                    max_in_flight=a.max_in_flight, footprint_factor=a.factor,
                    parked=attempts.parked(attempts.records(c.workdir)))
    c.too_large.update(e["mous_uid"] for e in result["too_large"])
    skipped = {e["mous_uid"] for e in result["skipped"]}
    c.skipped += len(skipped)
    entries[:] = [e for e in entries if e["mous_uid"] not in skipped]
    c.attempted_before = len(result["attempted_before_unpublished"])
    for e in result["start"]:
        m = by_uid[e["mous_uid"]]
        run = new_run(c, m, e["bytes"])
        if not admission.reserve(c.workdir, run.run_id, m.uid, e["bytes"], budget_bytes=c.budget_now,
                                 max_in_flight=a.max_in_flight):
            c.refused += 1   # plan_bulk defers it: the next pass decides again
            c.changed = True
            continue
        if m.first_admitted is None:
            m.first_admitted = c.now
        c.flying[run.run_id] = run
        c.queue.append(run)
    start_waiting(c)


def finished(c: Campaign) -> bool:
    """Every MOUS that can be published is: poison and too-large ones never will be."""
    return all(m.manifest or m.uid in c.parked or m.uid in c.too_large for m in c.mouss)


def simulate(args) -> dict:
    t0 = time.perf_counter()
    rng = random.Random(args.seed)
    mouss = make_mouss(args, rng)
    by_uid = {m.uid: m for m in mouss}
    entries = [{"mous_uid": m.uid, "force": False} for m in mouss]
    # The ledger's every write is fsynced twice: on tmpfs that costs nothing, and the ledger's
    # I/O is not what is measured here.
    tmpdir = args.tmpdir or ("/dev/shm" if Path("/dev/shm").is_dir() else None)
    with tempfile.TemporaryDirectory(prefix="campaign-sim-", dir=tmpdir) as tmp:
        c = Campaign(args=args, workdir=Path(tmp), mouss=mouss, rng=rng)
        schedule(c, 0.0, PASS)
        limit = args.max_days * 1440
        while c.events:
            c.now, kind, _, run = heapq.heappop(c.events)
            observe(c)
            if kind == END:
                end_run(c, run)
                start_waiting(c)
            elif finished(c):
                break
            elif c.now > limit or c.now - c.last_publish > args.stall_days * 1440:
                c.stalled = True   # e.g. poison MOUSs re-admitted on every pass ahead of a large one
                break
            else:
                feeder_pass(c, entries, by_uid)
                schedule(c, c.now + args.pass_min, PASS)
        leftover = len(admission.entries(c.workdir))
    return report(c, args, time.perf_counter() - t0, leftover)


# ------------------------------------------------------------------ the figures
def report(c: Campaign, args, wall_s: float, leftover: int) -> dict:
    # The campaign ends at its last publish (the pass that sees it is over comes up to pass_min
    # later); worker time is counted up to then, runs of poison MOUSs still executing included.
    end = c.last_publish if finished(c) else c.now
    spans = c.busy + [(r.started, r.started + r.minutes) for r in c.running.values()]
    busy = sum(max(min(stop, end) - start, 0.0) for start, stop in spans)
    good = [m for m in c.mouss if not m.poison and m.uid not in c.too_large]
    ideal = sum(args.overhead_min + args.min_per_gb * m.raw / GB for m in good) / args.workers
    budget_b = args.budget_tb * TB
    admit_waits = [m.first_admitted for m in good if m.first_admitted is not None]
    # decide() lets a smaller MOUS start past a larger one that does not fit now: does the
    # largest twentieth then wait longer than the rest?
    largest = sorted(good, key=lambda m: m.raw)[-max(len(good) // 20, 1):] if good else []
    large_waits = [m.first_admitted for m in largest if m.first_admitted is not None]
    return {
        "mous": len(c.mouss),
        "raw_tb": round(sum(m.raw for m in c.mouss) / TB, 2),
        "workers": args.workers, "budget_tb": args.budget_tb, "budget_from_disk": args.budget_from_disk,
        "max_in_flight": args.max_in_flight, "factor": args.factor, "keep": args.keep, "seed": args.seed,
        "stalled": c.stalled, "published": c.published, "skipped_as_published": c.skipped, "unfinished": sum(1 for m in good if not m.manifest),
        "campaign_days": round(end / 1440, 2), "ideal_days": round(ideal / 1440, 2),
        "campaign_over_ideal": round(end / ideal, 3) if ideal else None,
        "utilisation": round(busy / (args.workers * end), 3) if end else None,
        "peak_reserved_tb": round(c.peak_reserved / TB, 2),
        "peak_reserved_over_budget": round(c.peak_reserved / budget_b, 3),
        "peak_actual_tb": round(c.peak_actual / TB, 2),
        "peak_actual_over_budget": round(c.peak_actual / budget_b, 3),
        "lowest_budget_tb": round((c.min_budget or 0) / TB, 2),
        "feeder_passes": c.passes, "passes_decided": c.decided,
        "too_large": len(c.too_large), "too_large_started": len(c.too_large & c.started_uids),
        "poison_mous": sum(m.poison for m in c.mouss), "failed_runs": c.failed_runs, "parked": len(c.parked),
        "max_attempts": args.max_attempts,
        "attempted_before_unpublished": c.attempted_before,
        "refused_reservations": c.refused,
        "mean_worker_wait_min": round(_mean(c.worker_waits), 1),
        "max_queued": c.peak_queued,
        "mean_admission_wait_h": round(_mean(admit_waits) / 60, 1),
        "max_admission_wait_h": round(max(admit_waits, default=0) / 60, 1),
        "largest_5pct_mean_admission_wait_h": round(_mean(large_waits) / 60, 1),
        "ledger_entries_left": leftover,
        "sim_wall_s": round(wall_s, 2),
    }


def _mean(xs) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def print_report(r: dict) -> None:
    print(f"MOUSs {r['mous']}, raw {r['raw_tb']} TB; {r['workers']} workers, budget {r['budget_tb']} TB"
          f"{' (from the disk)' if r['budget_from_disk'] else ''}, max in flight {r['max_in_flight']}, "
          f"factor {r['factor']}, keep {r['keep']}, seed {r['seed']}")
    if r["stalled"]:
        print("STALLED: nothing was published for --stall-days: the campaign cannot finish as it is")
    print(f"published {r['published']} (skipped by decide() as published: {r['skipped_as_published']}), unfinished {r['unfinished']}, too_large {r['too_large']} "
          f"(started: {r['too_large_started']}), poison {r['poison_mous']}, failed runs {r['failed_runs']}, "
          f"parked {r['parked']} (after {r['max_attempts']} failed runs in a row)")
    print(f"campaign {r['campaign_days']} d, ideal {r['ideal_days']} d: ratio {r['campaign_over_ideal']}; "
          f"worker utilisation {r['utilisation']}")
    print(f"peak reserved {r['peak_reserved_tb']} TB = {r['peak_reserved_over_budget']} x budget; "
          f"peak actual {r['peak_actual_tb']} TB = {r['peak_actual_over_budget']} x budget")
    print(f"feeder passes {r['feeder_passes']} (decide() called on {r['passes_decided']}); refused reservations {r['refused_reservations']}; "
          f"mean wait for a worker {r['mean_worker_wait_min']} min (max queued {r['max_queued']}); "
          f"wait for admission mean {r['mean_admission_wait_h']} h, max {r['max_admission_wait_h']} h, "
          f"largest 5% of MOUSs mean {r['largest_5pct_mean_admission_wait_h']} h")
    print(f"simulation wall-clock {r['sim_wall_s']} s")


# ------------------------------------------------------------------ command line
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mous", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=8)
    # 3 TB: the disk, not the workers, limits 8 workers (at 20 TB it never binds: ~0.4 of it is reserved).
    ap.add_argument("--budget-tb", type=float, default=3.0)
    ap.add_argument("--budget-from-disk", action="store_true",
                    help="--budget-tb is the disk; the budget is derived as admission.disk_budget does")
    ap.add_argument("--min-free-gb", type=float, default=50.0, help="with --budget-from-disk")
    ap.add_argument("--max-in-flight", type=int, default=16)
    ap.add_argument("--factor", type=float, default=11.0)
    ap.add_argument("--keep", choices=("nothing", "raw"), default="nothing")
    ap.add_argument("--pass-min", type=float, default=15.0, help="minutes between feeder passes")
    ap.add_argument("--overhead-min", type=float, default=10.0, help="a run's fixed worker minutes")
    ap.add_argument("--min-per-gb", type=float, default=6.0, help="a run's worker minutes per raw GB")
    ap.add_argument("--peak-lo", type=float, default=0.6, help="real peak disk / reservation, lowest")
    ap.add_argument("--peak-hi", type=float, default=1.0, help="real peak disk / reservation, highest")
    ap.add_argument("--fail-rate", type=float, default=0.0, help="fraction of poison MOUSs")
    ap.add_argument("--fail-after-min", type=float, default=5.0, help="minutes until a poison run fails")
    ap.add_argument("--max-attempts", type=int, default=3,
                    help="failed runs in a row that park a MOUS (the setting bulk_max_attempts; 0: never)")
    ap.add_argument("--too-large", type=int, default=0, help="MOUSs made larger than the whole budget")
    ap.add_argument("--max-days", type=float, default=365.0, help="stop the simulation after this")
    ap.add_argument("--stall-days", type=float, default=30.0,
                    help="stop when nothing was published for this long (reported as stalled)")
    ap.add_argument("--decide-every-pass", action="store_true",
                    help="call decide() on every pass, also those after which no run ended (slower, same result)")
    ap.add_argument("--tmpdir", help="where the temporary workdir goes (default /dev/shm when there is one)")
    ap.add_argument("--json", metavar="OUT", help="also write the figures as JSON here")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = simulate(args)
    print_report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
