"""One lock file per staged file, so two runs never stage the same ASDM at once.

flock() locks belong to the open file: they vanish with the process, so a
killed run never leaves a stale lock behind (the lock file itself stays).
"""
from __future__ import annotations

import fcntl
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import LockBusyError

log = logging.getLogger("alma_regen.staging")


@contextmanager
def file_lock(path: Path, timeout: float, what: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                if time.monotonic() >= deadline:
                    raise LockBusyError(f"{what} is being staged by another process (pid {holder}, lock {path})") from None
                if not waiting:
                    log.info("%s: waiting for the lock held by pid %s", what, holder)
                    waiting = True
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
