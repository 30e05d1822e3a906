"""Scheduled bulk reprocessing: which MOUSs of a worklist to (re)start now.

A worklist is a text file or S3 object: one MOUS uid per line (`#` comments
allowed), or JSON (a list of uids, or of {"mous_uid": ..., "force": ...}).
A MOUS already published with the same inputs and CASA is skipped unless
forced; one whose run is in flight waits for it; the rest are admitted by disk
reservation (admission.py): started, in worklist order, while their predicted footprint
fits the disk budget and fewer than `max_in_flight` runs are in flight. Run on a frequent
schedule, the bulk DAG is a feeder: each pass starts what now fits, until the worklist is
done, and neither floods the scheduler nor the disk.
"""
import json
import logging
import re
import shutil
import time
from pathlib import Path

from . import admission, attempts, jsonstore, naming
from .admission import admit, footprint
from .errors import PermanentError
from .steps import STEP_FILE
from .products.manifest import latest_manifest
from .products.reuse import same_as_published

log = logging.getLogger(__name__)

LISTINGS = ".listings"  # under the workdir: the archive's answers the feeder keeps


def listed_files(source, mous: str, *, workdir, ttl_s: float, now: float | None = None) -> dict:
    """{archive file name: size} of a MOUS, as the archive lists it, kept `ttl_s` seconds.

    The feeder asks about every MOUS of the worklist on every pass (every 15 minutes:
    a thousand listings a pass for a thousand MOUSs), while what the archive holds for a
    MOUS changes rarely. A kept answer is used only for the same source; its cost is that
    a MOUS whose archive files change is seen as changed up to ttl_s later (a forced run
    does not wait). A DAG run lists afresh, once (staging/run_listing.py). ttl_s <= 0: no keeping.
    """
    from .staging import list_mous
    now = time.time() if now is None else now
    path = Path(workdir) / LISTINGS / f"{naming.uid_to_file(mous)}.json"
    if ttl_s > 0:
        try:
            kept = json.loads(path.read_text())
            if kept["source"] == source.describe() and 0 <= now - kept["at"] < ttl_s:
                return {str(k): int(v) for k, v in kept["files"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # none kept, or unreadable: ask the archive
    files = {f.name: f.size for f in list_mous(source, mous).all_files()}
    if ttl_s > 0:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            jsonstore.write_atomic(path, {"source": source.describe(), "at": now, "files": files},
                                   what="the archive's listing", indent=None)
        except (OSError, PermanentError) as exc:  # keeping is an optimisation: the answer is still good
            log.warning("could not keep the archive's listing of %s: %s", mous, exc)
    return files


def parse_worklist(text: str, where: str) -> list:
    """[{"mous_uid", "force"}] from a worklist's text; refuses anything that is not a MOUS uid."""
    text = text.strip()
    if text.startswith(("[", "{")):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise PermanentError(f"{where}: not valid JSON: {exc}") from None
        items = doc.get("mous", doc) if isinstance(doc, dict) else doc
        entries = [{"mous_uid": i, "force": False} if isinstance(i, str) else
                   {"mous_uid": i.get("mous_uid"), "force": bool(i.get("force", False))} for i in items]
    else:
        entries = [{"mous_uid": ln.split("#")[0].strip(), "force": False} for ln in text.splitlines()]
        entries = [e for e in entries if e["mous_uid"]]
    seen, out = set(), []
    for n, e in enumerate(entries, 1):
        uid = e["mous_uid"]
        if not isinstance(uid, str) or not re.match(naming.MOUS_PARAM_PATTERN, uid):
            raise PermanentError(f"{where}: entry {n} is not a MOUS uid (uid://A001/X.../X...): {uid!r}")
        if uid not in seen:
            seen.add(uid)
            out.append(e)
    return out


def read_worklist(location: str, s3_client=None) -> list:
    if location.startswith("s3://"):
        from .s3 import parse_s3_url
        bucket, key = parse_s3_url(location)
        text = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
    else:
        try:
            text = Path(location).read_text(encoding="utf-8")
        except OSError as exc:
            raise PermanentError(f"worklist {location}: {exc}") from None
    return parse_worklist(text, location)


def decide(entries: list, *, list_files, manifest_of, casa_version: str, force_all: bool, workdir,
           budget_bytes: int, ledger: dict, max_in_flight: int, footprint_factor: float,
           parked: dict | None = None) -> dict:
    """Split a worklist into start / skipped / deferred / parked / too_large, with the reason for each.

    list_files(mous) -> {archive file name: size}; manifest_of(mous) -> the published manifest
    or None; ledger: the reservations now held (admission.entries); parked: {mous: why} of the
    MOUSs parked after failing again and again (attempts.parked). A MOUS published as it
    would be again is skipped; one whose run is in flight (in the ledger) is deferred, so a
    frequent feeder never starts a MOUS twice; a parked one is not started unless forced;
    the rest go through admission.admit in worklist order: started while their footprint
    fits the budget and the in-flight cap, too_large when larger than the whole budget,
    deferred otherwise.
    """
    parked = parked or {}
    flying = {e["mous_uid"]: run for run, e in ledger.items()}
    skipped, candidates, waiting, attempted, parked_out = [], [], [], [], []
    for e in entries:
        mous = e["mous_uid"]
        files = list_files(mous)
        if not (force_all or e["force"]):
            same, why = same_as_published(manifest_of(mous), files, casa_version)
            if same:
                skipped.append({"mous_uid": mous, "why": why})
                continue
        else:
            why = "forced"
        if mous in flying:
            waiting.append({"mous_uid": mous, "why": f"in flight: run {flying[mous]}"})
            continue
        if (Path(workdir) / naming.member_dir(mous) / STEP_FILE).exists():
            attempted.append(mous)  # worked on before, not published as it is now, and not in flight
        if mous in parked and not (force_all or e["force"]):
            parked_out.append({"mous_uid": mous, "why": parked[mous]})
            continue
        candidates.append({"mous_uid": mous, "why": why, "bytes": footprint(files, footprint_factor),
                           **({"unpark": True} if mous in parked else {})})
    reserved_bytes = sum(e["bytes"] for e in ledger.values())
    start, deferred, too_large = admit(candidates, budget_bytes=budget_bytes, reserved_bytes=reserved_bytes,
                                       in_flight=len(ledger), max_in_flight=max_in_flight)
    return {"start": start, "skipped": skipped, "deferred": waiting + deferred, "parked": parked_out,
            "too_large": too_large,
            "attempted_before_unpublished": attempted, "budget_gb": round(budget_bytes / 1e9, 1),
            "reserved_gb": round(reserved_bytes / 1e9, 1), "budget_bytes": budget_bytes,
            "reserved_bytes": reserved_bytes, "in_flight": len(ledger)}


def _last_error(rec: dict):
    for run in reversed(rec.get("runs") or []):
        if run.get("outcome") == "failed":
            return run.get("error")
    return None


def plan_bulk(worklist: str, *, source_for, products_url: str, products_client, archive_client=None,
              casa_version: str, force_all: bool, workdir, run_id_for, budget_gb: float, min_free_gb: float,
              max_in_flight: int, footprint_factor: float, listing_ttl_s: float = 0) -> dict:
    """The bulk DAG's decision, with real sources (see `decide`), and a reservation in the
    ledger for each run it starts, under run_id_for(mous), the id it will be triggered as.

    The ledger's reservations made by an earlier attempt of this same plan (a retry: same
    run ids) are its own, not runs in flight: decided again, and reserve() keeps them as
    they are. A start whose reservation is refused (a run reserved meanwhile: the check is
    repeated under the ledger's lock) is deferred.
    """
    entries = read_worklist(worklist, archive_client or products_client)
    source = source_for()

    def list_files(mous):
        return listed_files(source, mous, workdir=workdir, ttl_s=listing_ttl_s)

    def manifest_of(mous):
        return latest_manifest(products_client, products_url, mous) if products_url else None

    Path(workdir).mkdir(parents=True, exist_ok=True)
    ledger = {r: e for r, e in admission.entries(workdir).items() if r != run_id_for(e["mous_uid"])}
    budget = admission.disk_budget(workdir, budget_gb=budget_gb, min_free_gb=min_free_gb)
    tried = attempts.records(workdir)
    result = decide(entries, list_files=list_files, manifest_of=manifest_of, casa_version=casa_version,
                    force_all=force_all, workdir=workdir, budget_bytes=budget, ledger=ledger,
                    max_in_flight=max_in_flight, footprint_factor=footprint_factor,
                    parked=attempts.parked(tried))
    started = []
    for e in result["start"]:
        run = run_id_for(e["mous_uid"])
        if admission.reserve(workdir, run, e["mous_uid"], e["bytes"], budget_bytes=budget,
                             max_in_flight=max_in_flight):
            if e.pop("unpark", False) and attempts.unpark(workdir, e["mous_uid"]):
                log.info("bulk: %s was parked; forced, it starts again", e["mous_uid"])
            started.append({**e, "run_id": run})
        else:
            result["deferred"].append({**e, "why": "another run reserved the space or the last in-flight "
                                                   "slot meanwhile"})
    result["start"] = started
    # The campaign view's "attempts": the MOUSs of this worklist that failed before, and how.
    work = {e["mous_uid"] for e in entries}
    result["attempts"] = {m: {"failures": r.get("failures", 0), "error": _last_error(r)}
                          for m, r in tried.items() if m in work and r.get("failures")}
    result["free_gb"] = round(shutil.disk_usage(workdir).free / 1e9, 1)
    log.info("bulk: %d to start, %d skipped (published, same inputs and CASA), %d deferred, %d parked, "
             "%d too large for the %.1f GB budget (%.1f GB reserved by %d runs in flight before this plan)",
             len(result["start"]), len(result["skipped"]), len(result["deferred"]), len(result["parked"]),
             len(result["too_large"]),
             result["budget_gb"], result["reserved_gb"], result["in_flight"])
    return result
