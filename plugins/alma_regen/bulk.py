"""Scheduled bulk reprocessing: which MOUSs of a worklist to (re)start now.

A worklist is a text file or S3 object: one MOUS uid per line (`#` comments
allowed), or JSON (a list of uids, or of {"mous_uid": ..., "force": ...}).
A MOUS already published with the same inputs and CASA is skipped unless
forced; the rest are started, at most `max_runs` per bulk run and only while
the working disk has `min_free_gb` free, so a 1,000-MOUS worklist trickles in
instead of flooding the scheduler or the disk.
"""
import json
import logging
import re
import shutil
from pathlib import Path

from . import naming
from .errors import PermanentError
from .notify import STEP_FILE
from .reuse import latest_manifest, same_as_published

log = logging.getLogger(__name__)


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
        from .publish import parse_s3_url
        bucket, key = parse_s3_url(location)
        text = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
    else:
        try:
            text = Path(location).read_text(encoding="utf-8")
        except OSError as exc:
            raise PermanentError(f"worklist {location}: {exc}") from None
    return parse_worklist(text, location)


def decide(entries: list, *, list_files, manifest_of, casa_version: str, force_all: bool,
           workdir, max_runs: int, min_free_gb: float) -> dict:
    """Split a worklist into start / skip / deferred, with the reason for each.

    list_files(mous) -> {archive file name: size}; manifest_of(mous) -> the published manifest or None.
    """
    Path(workdir).mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(workdir).free / 1e9
    start, skipped, deferred, attempted = [], [], [], []
    for e in entries:
        mous = e["mous_uid"]
        if not (force_all or e["force"]):
            same, why = same_as_published(manifest_of(mous), list_files(mous), casa_version)
            if same:
                skipped.append({"mous_uid": mous, "why": why})
                continue
        else:
            why = "forced"
        if (Path(workdir) / naming.member_dir(mous) / STEP_FILE).exists():
            attempted.append(mous)  # worked on before and not published as it is now
        if free_gb < min_free_gb:
            deferred.append({"mous_uid": mous, "why": f"only {free_gb:.1f} GB free in {workdir} "
                                                     f"(the gate is {min_free_gb} GB)"})
        elif len(start) >= max_runs:
            deferred.append({"mous_uid": mous, "why": f"at most {max_runs} runs per bulk run"})
        else:
            start.append({"mous_uid": mous, "why": why})
    return {"start": start, "skipped": skipped, "deferred": deferred,
            "attempted_before_unpublished": attempted, "free_gb": round(free_gb, 1)}


def plan_bulk(worklist: str, *, source_for, products_url: str, products_client, archive_client=None,
              casa_version: str, force_all: bool, workdir, max_runs: int, min_free_gb: float) -> dict:
    """The bulk DAG's decision, with real sources: see `decide`."""
    from .staging import list_mous
    entries = read_worklist(worklist, archive_client or products_client)
    source = source_for()

    def list_files(mous):
        return {f.name: f.size for f in list_mous(source, mous).all_files()}

    def manifest_of(mous):
        return latest_manifest(products_client, products_url, mous) if products_url else None

    result = decide(entries, list_files=list_files, manifest_of=manifest_of, casa_version=casa_version,
                    force_all=force_all, workdir=workdir, max_runs=max_runs, min_free_gb=min_free_gb)
    log.info("bulk: %d to start, %d skipped (published, same inputs and CASA), %d deferred",
             len(result["start"]), len(result["skipped"]), len(result["deferred"]))
    return result
