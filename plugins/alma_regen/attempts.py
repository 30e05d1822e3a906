"""Each MOUS's runs and failures, and parking: a MOUS that keeps failing stops being retried.

A campaign of thousands of MOUSs meets a few that fail whatever is tried (a broken
delivery, a CASA that crashes on them). The feeder would start them again on every pass,
taking a worker and a disk reservation each time. So every alma_regenerate run records
its end here (its teardown, release_mous), and after `bulk_max_attempts` failed runs in
a row the MOUS is *parked*, with the reason: the feeder reports it and does not start it
again until it is forced (a worklist entry with "force": true, the bulk DAG's Force, or
an operator's own run, which is never held back). A successful run, or a forced start,
clears the count.

One JSON file shared by every worker and the feeder: `<workdir>/.attempts.json`, MOUS uid ->
    {"failures": failed runs in a row,
     "runs": the last RUNS_KEPT ends: [{"run_id", "outcome", "ended", "seconds", "bytes", "error"}],
     "error": the failing task and its error, noted as it fails (the run's end takes it),
     "parked": {"why", "at"} or absent}
Changed under its lock (jsonstore.py). No Airflow here: the listener and the teardown
pass plain values in.
"""
from __future__ import annotations

import time
from pathlib import Path

from . import jsonstore

ATTEMPTS = ".attempts.json"
SCHEMA = "alma-regen/attempts/1"
RUNS_KEPT = 10
ERROR_CHARS = 300


def path_of(workdir) -> Path:
    return Path(workdir) / ATTEMPTS


def _valid(mous, rec) -> bool:
    return isinstance(rec, dict) and isinstance(rec.get("failures", 0), int) and isinstance(rec.get("runs", []), list)


def _locked(workdir, write: bool = True):
    return jsonstore.locked(path_of(workdir), schema=SCHEMA, key="mous", valid=_valid,
                            what="the attempts file", write=write)


def records(workdir) -> dict:
    """MOUS uid -> its record (a snapshot)."""
    return jsonstore.snapshot(path_of(workdir), schema=SCHEMA, key="mous", valid=_valid, what="the attempts file")


def parked(recs: dict) -> dict:
    """MOUS uid -> why it is parked, for the parked ones of `recs` (records())."""
    return {m: r["parked"]["why"] for m, r in recs.items() if isinstance(r.get("parked"), dict)}


def note_error(workdir, mous: str, run_id: str, task_id: str, error) -> None:
    """Note the error a task of the run failed with: the run's end, if it failed, takes it as
    its reason (a task that failed and then passed on a retry leaves a note nobody takes)."""
    first = (str(error).strip().splitlines() or [""])[0]
    text = f"{task_id}: {type(error).__name__}: {first}" if isinstance(error, BaseException) else f"{task_id}: {first}"
    with _locked(workdir) as recs:
        rec = recs.setdefault(mous, {"failures": 0, "runs": []})
        rec["error"] = {"run_id": run_id, "text": text[:ERROR_CHARS]}


def record_end(workdir, mous: str, run_id: str, *, failed: bool, seconds: float | None = None,
               nbytes: int | None = None, max_attempts: int = 0, now: float | None = None) -> dict:
    """Record the end of a run; the MOUS's record afterwards.

    A failed run adds one to the failures in a row and, at `max_attempts` (> 0), parks the
    MOUS; a successful one clears them (and any parking: it worked). Recording the same
    run twice (a retried teardown) counts it once.
    """
    now = time.time() if now is None else now
    with _locked(workdir) as recs:
        rec = recs.setdefault(mous, {"failures": 0, "runs": []})
        if any(r.get("run_id") == run_id for r in rec["runs"]):
            return dict(rec)
        noted = rec.pop("error", None)
        error = None
        if failed:
            error = noted["text"] if isinstance(noted, dict) and noted.get("run_id") == run_id else "a task failed"
            rec["failures"] = rec.get("failures", 0) + 1
            if max_attempts > 0 and rec["failures"] >= max_attempts and not rec.get("parked"):
                rec["parked"] = {"why": f"{rec['failures']} failed runs in a row (the last, {run_id}: {error}); "
                                        "parked until forced", "at": now}
        else:
            rec["failures"] = 0
            rec.pop("parked", None)
        rec["runs"] = (rec["runs"] + [{"run_id": run_id, "outcome": "failed" if failed else "success",
                                       "ended": now, "seconds": None if seconds is None else round(seconds, 1),
                                       "bytes": nbytes, "error": error}])[-RUNS_KEPT:]
        return dict(rec)


def unpark(workdir, mous: str) -> bool:
    """Clear the MOUS's parking and failure count (it is being forced); True if it was parked."""
    if not path_of(workdir).exists():
        return False
    with _locked(workdir) as recs:
        rec = recs.get(mous)
        if not rec:
            return False
        was = rec.pop("parked", None) is not None
        rec["failures"] = 0
        return was
