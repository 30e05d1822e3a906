"""Disk admission by reservation: a run starts only when its predicted peak disk fits.

Every alma_regenerate run holds a reservation of its predicted footprint in one ledger
that every run and the bulk feeder share: `<workdir>/.ledger.json`, run_id ->
{"mous_uid", "bytes", "since"}. The bulk plan reserves each run it starts (under the run
id it will trigger) before triggering it; a run started some other way (an operator's
rerun) reserves at lock_mous; a run shrinks its reservation to what its member folder
still holds once its products are published and the folder cleaned (`shrink`); every run
releases at release_mous (its teardown). The
feeder forgets the entries of runs that are no longer queued or running (a killed run
whose teardown never ran), so nothing holds disk forever.

Concurrency: every read-modify-write of the ledger happens under an flock of
`<workdir>/.ledger.json.lock` (on Linux NFS an flock is carried as a POSIX lock, so
workers on other hosts are excluded too), and the ledger is replaced atomically
(jsonstore.py): a reader never sees half a ledger. An empty or corrupt ledger (a hand
edit, an old copy) is set aside with a warning and started afresh, never a crash: the
runs it held are then uncounted until they end, which only over-admits for a while.

No Airflow here: the operators (operators/bulk.py, operators/lock.py) ask Airflow what
they need and pass plain values in.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from . import jsonstore, naming
from .staging.progress import human

log = logging.getLogger(__name__)

LEDGER = ".ledger.json"
SCHEMA = "alma-regen/ledger/1"
ASDM_SUFFIX = ".asdm.sdm.tar"   # an ASDM as the archive lists it (staging.classify's rule)
ACTIVE_STATES = ("queued", "running")
# A reserved run Airflow does not know: the plan reserves just before its trigger task
# creates the run, so only after this long is "no such run" a failed trigger, not a race.
MISSING_GRACE_S = 15 * 60
# A run whose state nobody can tell (Airflow not answering) keeps its reservation this long,
# as a MOUS lock does (mous_lock.MAX_AGE_S).
MAX_AGE_S = 7 * 86400
GB = 1e9


# ------------------------------------------------------------------ footprint
def footprint(files: dict, factor: float) -> int:
    """The predicted peak disk of a run, in bytes: the raw ASDM tars the archive lists x
    `factor`, plus every other file (README, auxiliary and product tars) once.

    `factor` is the setting footprint_factor. Its default, 11, is scriptForPI's own disk check
    (alma_regen.delivery.disk_factor, the rule the plan and calibration.preflight_disk use:
    (11 + 3f) x raw/, 7 + 3f for SPACESAVING=1, 3 + 3f for >= 2, f = 1 with a flux, pol or
    ImagingPrep script) at SPACESAVING=0 without such scripts. It covers every run at the
    DAG's default SPACESAVING=1 (at most 10 x); a run with SPACESAVING=0 and such a script
    needs 14 x, which the archive's file list cannot tell before staging. The native engine
    needs less, but we have not measured how much, so 11 is a default to tune from our own
    runs, not a measurement. A size the archive does not give (missing, -1) counts as 0.
    """
    raw = other = 0
    for name, size in files.items():
        size = size if isinstance(size, int) and size > 0 else 0
        if name.endswith(ASDM_SUFFIX):
            raw += size
        else:
            other += size
    return int(raw * factor + other)


# ------------------------------------------------------------------ admission
def admit(candidates: list, *, budget_bytes: int, reserved_bytes: int, in_flight: int,
          max_in_flight: int) -> tuple:
    """(start, deferred, too_large) of candidates [{"mous_uid", "bytes", ...}], in their order.

    A candidate starts while its footprint fits what the budget has left (budget minus what
    is reserved, including the ones started here) and fewer than `max_in_flight` runs are in
    flight. One larger than the whole budget can never start: it is too_large, reported and
    never attempted. The rest are deferred, each with why. Order is kept and a smaller MOUS
    further down may start past a larger one that does not fit now (the worklist's order is
    a preference, not a queue that one large MOUS may block).
    """
    start, deferred, too_large = [], [], []
    reserved, flying = reserved_bytes, in_flight
    for c in candidates:
        need = int(c["bytes"])
        if need > budget_bytes:
            too_large.append({**c, "why": f"needs {human(need)}, the budget is {human(budget_bytes)}"})
        elif flying >= max_in_flight:
            deferred.append({**c, "why": f"{flying} runs in flight, the cap is {max_in_flight}"})
        elif reserved + need > budget_bytes:
            deferred.append({**c, "why": f"needs {human(need)}, {human(max(budget_bytes - reserved, 0))} "
                                         f"of the {human(budget_bytes)} budget is free of reservations"})
        else:
            start.append(c)
            reserved += need
            flying += 1
    return start, deferred, too_large


def disk_budget(workdir, *, budget_gb: float, min_free_gb: float) -> int:
    """The bytes runs may reserve in all: `budget_gb` when set (> 0), else what the workdir's
    disk can give runs: its free space now, plus what the runs in the ledger already use of
    their reservations (their member folders, each counted up to its reservation), minus
    `min_free_gb`.

    Adding back only what the runs *use* (not all they reserved) keeps the growth still to
    come of runs just started out of the free space: a run reserves 11 x raw but has written
    nothing yet, so free space alone would let the next pass admit the same space twice.
    """
    if budget_gb > 0:
        return int(budget_gb * GB)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(workdir).free
    used = sum(min(usage(Path(workdir) / naming.member_dir(e["mous_uid"])), e["bytes"])
               for e in entries(workdir).values())
    return max(int(free + used - min_free_gb * GB), 0)


def usage(folder: Path) -> int:
    """Bytes a folder takes on disk (allocated blocks: sparse files count what they use;
    symlinks not followed, a hard-linked file once)."""
    total, seen = 0, set()
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue  # removed while we walk
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return total


# ------------------------------------------------------------------ the ledger
def ledger_path(workdir) -> Path:
    return Path(workdir) / LEDGER


def reserve(workdir, run_id: str, mous: str, nbytes: int, *, budget_bytes: int | None = None,
            max_in_flight: int | None = None) -> bool:
    """Reserve `nbytes` for the run; True when it holds a reservation afterwards.

    Idempotent: a run that already holds one keeps it as it is (a retried plan, or the
    lock of a run the plan reserved for). With `budget_bytes` / `max_in_flight`, the
    reservation is refused (False) when it would exceed them: checked under the ledger's
    lock, so concurrent starts never reserve past the budget together.
    """
    with _locked(workdir) as runs:
        if run_id in runs:
            return True
        if max_in_flight is not None and len(runs) >= max_in_flight:
            return False
        if budget_bytes is not None and _total(runs) + int(nbytes) > budget_bytes:
            return False
        runs[run_id] = {"mous_uid": mous, "bytes": int(nbytes), "since": time.time()}
        return True


def release(workdir, run_id: str) -> bool:
    """Drop the run's reservation; True when it had one (releasing twice is harmless)."""
    if not ledger_path(workdir).exists():
        return False
    with _locked(workdir) as runs:
        return runs.pop(run_id, None) is not None


def shrink(workdir, run_id: str, nbytes: int) -> int | None:
    """Lower the run's reservation to `nbytes` (never raise it): what it holds now, or None
    when it holds none. A run calls this when its disk use has come down for good (its
    member folder cleaned after the publish), so the feeder can admit the next run before
    this one's teardown."""
    if not ledger_path(workdir).exists():
        return None
    with _locked(workdir) as runs:
        e = runs.get(run_id)
        if e is None:
            return None
        e["bytes"] = min(e["bytes"], max(int(nbytes), 0))
        return e["bytes"]


def reserved(workdir) -> int:
    """Bytes reserved in all."""
    return _total(entries(workdir))


def entries(workdir) -> dict:
    """run_id -> {"mous_uid", "bytes", "since"}: a snapshot."""
    if not ledger_path(workdir).exists():
        return {}
    with _locked(workdir, write=False) as runs:
        return dict(runs)


def forget_except(workdir, live_run_ids, *, among=None) -> list:
    """Drop the entries of runs not in `live_run_ids`; the run ids dropped.

    among: only these run ids are considered (the ones the caller asked Airflow about), so
    a run that reserved meanwhile is not dropped for not being in a list made before it.
    """
    live = set(live_run_ids)
    if not ledger_path(workdir).exists():
        return []
    with _locked(workdir) as runs:
        gone = [r for r in runs if r not in live and (among is None or r in among)]
        for r in gone:
            del runs[r]
    return gone


def forget_stale(workdir, state_of, now: float | None = None) -> list:
    """Forget the reservations of runs that are over; [(run_id, why)] of those forgotten.

    state_of(run_id) -> the run's state ("queued", "running", "success", "failed", ...),
    "missing" when Airflow has no such run, or None when it cannot tell. A run queued or
    running keeps its reservation however old; an ended one loses it; a missing one after
    MISSING_GRACE_S (its trigger failed, or it was deleted); an unknown one after MAX_AGE_S.
    """
    now = time.time() if now is None else now
    snapshot = entries(workdir)
    live, why = [], {}
    for run, e in snapshot.items():
        state, age = state_of(run), now - e.get("since", 0)
        if state in ACTIVE_STATES:
            live.append(run)
        elif state == "missing":
            if age < MISSING_GRACE_S:
                live.append(run)
            else:
                why[run] = f"Airflow has no run {run} ({age / 60:.0f} min after it was reserved)"
        elif state is None:
            if age < MAX_AGE_S:
                live.append(run)
            else:
                why[run] = "its state is unknown and it was reserved more than 7 days ago"
        else:
            why[run] = f"the run is {state}"
    gone = forget_except(workdir, live, among=set(snapshot))
    for run in gone:
        log.warning("ledger: forgot the reservation of %s (%s, %.1f GB): %s", run,
                    snapshot[run].get("mous_uid"), snapshot[run].get("bytes", 0) / GB, why.get(run, "ended"))
    return [(r, why.get(r, "")) for r in gone]


# ------------------------------------------------------------------ internals
def _total(runs: dict) -> int:
    return sum(e["bytes"] for e in runs.values())


def _valid(run_id, e) -> bool:
    return (isinstance(e, dict) and isinstance(e.get("bytes"), int) and isinstance(e.get("mous_uid"), str)
            and isinstance(e.get("since", 0), (int, float)))


def _locked(workdir, write: bool = True):
    """The ledger's runs under its lock; written back (atomically) when `write` and changed."""
    return jsonstore.locked(ledger_path(workdir), schema=SCHEMA, key="runs", valid=_valid,
                            what="the disk reservation ledger", write=write)
