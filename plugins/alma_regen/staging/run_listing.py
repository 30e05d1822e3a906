"""The archive's listing of a MOUS, asked once per DAG run and read by the run's later steps.

A run of alma_regenerate needs the MOUS's listing (the request handler's DataLink answer, or
the S3 mirror's) in up to six steps: the disk reservation (lock_mous), the reuse check, the
auxiliary staging, the plan before staging and each EB's staging. Each used to ask the archive
again, where `alma-regen run` asks once; the real DataLink service can take seconds per answer.
Now the first step that needs it asks and keeps the answer in
`<workdir>/.run-listings/<MOUS>.json` with the run id and the source; a later step of the same
run, from the same source, reads it. So every EB of a run is staged against one listing (the
same sizes and ETags), which is also the consistent thing to stage against.

Listed afresh, as before, and kept in place of the old answer:
  - by another run, or for another source (another run id or source in the file);
  - by a retry of any step (`fresh=True`: a try after a failure, or a cleared task): the failure
    may have come from what the listing said (a file replaced meanwhile: SourceChangedError, an
    error row the archive has since dropped), and staging's own rule is that a retry re-lists;
  - when the kept file cannot be read (a warning; never a failure): keeping is an optimisation.
Only a listing that sorts into the MOUS's files (stage.classify) is kept: one that fails is
asked again by the next step, as before. The teardown removes the run's file (`forget`).

This is not the bulk feeder's listing cache (`<workdir>/.listings/`, bulk.listed_files): that
one keeps file names and sizes for hours to decide what to start; this one lives for one run
and keeps the whole answer (URLs, ETags, the archive's error rows, which staging's record of
missing EBs quotes).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Optional

from .. import naming
from ..errors import PermanentError
from ..jsonstore import write_atomic
from .datalink import Listing, RemoteFile
from .stage import MousFiles, check_uid, classify

log = logging.getLogger("alma_regen.staging")

RUN_LISTINGS = ".run-listings"  # under the workdir, one file per MOUS (one run per MOUS at a time)
SCHEMA = "alma-regen/run-listing/1"
_FIELDS = {f.name: f.type for f in fields(RemoteFile)}


def path_of(workdir, mous: str) -> Path:
    return Path(workdir) / RUN_LISTINGS / f"{naming.uid_to_file(mous)}.json"


def run_listing(source, mous: str, workdir, run_id: Optional[str], *, fresh: bool = False,
                by: str = "") -> MousFiles:
    """The MOUS's files as `source` lists them for the run `run_id`: the answer an earlier step of
    the run kept, else the archive's now (then kept for the run's later steps).

    run_id None (a step run by hand, a test): asked now, not kept. fresh: asked now and kept in
    place of any earlier answer (a retry). `by` names the step in the file (for the log)."""
    check_uid(mous)
    path = path_of(workdir, mous)
    where = source.describe()
    if run_id and not fresh:
        kept = _read(path, run_id, where, mous)
        if kept is not None:
            files, doc = kept
            log.info("%s: the archive's listing as %s asked it for this run %.0f s ago (%d files; %s)",
                     mous, doc["by"] or "an earlier step", max(time.time() - doc["at"], 0.0), len(files), where)
            return classify(files, mous)
    t = time.monotonic()
    files = source.list_files(mous)
    listing = classify(files, mous)
    log.info("%s: listed by the archive in %.2f s (%d files; %s)", mous, time.monotonic() - t, len(files), where)
    if run_id:
        doc = {"schema": SCHEMA, "run_id": run_id, "source": where, "mous": mous, "at": time.time(), "by": by,
               "files": [asdict(f) for f in files],
               "errors": [list(e) for e in getattr(files, "errors", [])]}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, doc, what="the run's archive listing", indent=None)
        except (OSError, PermanentError) as exc:  # the answer is still good; the next step asks again
            log.warning("could not keep the archive's listing of %s for the run's later steps: %s", mous, exc)
    return listing


def _read(path: Path, run_id: str, where: str, mous: str) -> Optional[tuple]:
    """(Listing, document) kept for this run and source, or None (none, another run's, unreadable)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("%s: the run's kept listing %s is unreadable (%s): asking the archive again", mous, path, exc)
        return None
    try:
        if doc["run_id"] != run_id or doc["source"] != where or doc["mous"] != mous:
            return None  # another run's (or source's): not this run's answer
        files = [_remote_file(f) for f in doc["files"]]
        errors = [(str(i), str(m)) for i, m in doc["errors"]]
        doc["at"], doc["by"] = float(doc["at"]), str(doc.get("by") or "")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("%s: the run's kept listing %s is not one (%s: %s): asking the archive again", mous, path,
                    type(exc).__name__, exc)
        return None
    return Listing(files, errors), doc


def _remote_file(d: dict) -> RemoteFile:
    if not isinstance(d, dict) or set(d) != set(_FIELDS):
        raise ValueError(f"a file entry with fields {sorted(d) if isinstance(d, dict) else type(d).__name__}")
    if not isinstance(d["size"], int) or isinstance(d["size"], bool) or \
            not all(isinstance(d[k], str) for k in _FIELDS if k != "size"):
        raise ValueError(f"a file entry of the wrong types: {d.get('name')!r}")
    return RemoteFile(**d)


def forget(workdir, mous: str, run_id: str) -> bool:
    """Remove the run's kept listing (the run's teardown); another run's is left alone. True if removed."""
    path = path_of(workdir, mous)
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("run_id") != run_id:
            return False
    except FileNotFoundError:
        return False
    except (OSError, ValueError, AttributeError):
        pass  # unreadable: nobody can use it, it goes
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
