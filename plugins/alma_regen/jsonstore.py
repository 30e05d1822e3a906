"""Small JSON state files that several processes share: written atomically, changed under a lock.

The disk reservation ledger (admission.py), the per-MOUS attempts (attempts.py) and the
feeder's kept listings (bulk.py) are each one JSON file in the workdir that workers, the
feeder and the command line read and change. What they share lives here:

- `write_atomic`: temporary file, fsync, rename, fsync of the folder: a reader never sees
  half a file, and a crash leaves the old one or the new one.
- `locked`: a read-modify-write under an flock of `<file>.lock` (on Linux NFS an flock is
  carried as a POSIX lock, so workers on other hosts are excluded too). A file that is
  not what it should be (a hand edit, an old copy, an empty file) is set aside as
  `<file>.corrupt` with a warning and started afresh, never a crash: these files hold
  bookkeeping that repairs itself, not data.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .errors import PermanentError

log = logging.getLogger(__name__)


def write_atomic(path: Path, doc, *, what: str, indent: int | None = 1) -> None:
    """Replace `path` with `doc` as JSON, atomically and durably; `what` names it in errors."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=indent, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise PermanentError(f"no space left to write {what} {path}") from None
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


@contextmanager
def locked(path: Path, *, schema: str, key: str, valid: Callable[[str, object], bool], what: str,
           write: bool = True):
    """The dict under `key` of the file at `path`, under its lock; written back when changed.

    valid(name, entry) says which entries to keep (the rest are dropped with a warning).
    The file is {"schema": schema, key: {...}}.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise PermanentError(f"cannot open the lock of {what} in {path.parent}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        entries = _read(path, key=key, valid=valid, what=what)
        before = json.dumps(entries, sort_keys=True)
        yield entries
        if write and json.dumps(entries, sort_keys=True) != before:
            write_atomic(path, {"schema": schema, key: entries}, what=what)
    finally:
        os.close(fd)  # releases the flock


def snapshot(path: Path, **kw) -> dict:
    """A copy of the entries, read under the lock (an absent file: {})."""
    if not Path(path).exists():
        return {}
    with locked(path, write=False, **kw) as entries:
        return dict(entries)


def _read(path: Path, *, key: str, valid, what: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        return _set_aside(path, f"unreadable ({exc})", what)
    try:
        doc = json.loads(text)
    except ValueError:
        return _set_aside(path, "empty" if not text.strip() else "not JSON", what)
    entries = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(entries, dict):
        return _set_aside(path, f"not {what}", what)
    good = {k: e for k, e in entries.items() if valid(k, e)}
    if len(good) != len(entries):
        log.warning("%s %s: dropped %d malformed entries", what, path, len(entries) - len(good))
    return good


def _set_aside(path: Path, why: str, what: str) -> dict:
    log.warning("%s %s is %s: set aside as %s.corrupt and started afresh", what, path, why, path.name)
    try:
        os.replace(path, path.with_name(path.name + ".corrupt"))
    except OSError:
        pass
    return {}
