"""How long a staging or CASA step may run: from the size of its data and the settings.

A hung CASA (or a source that stops sending) must not hold a worker slot for
ever, and a large MOUS must not be killed for being large. Each step's limit is
`max(min_timeout_s, size in GB x seconds per GB)`:

    stage_timeout_s_per_gb  the archive's size of the files a staging step fetches
    casa_timeout_s_per_gb   the MOUS's raw ASDMs in raw/ (what every CASA step's work grows with)
    min_timeout_s           the floor: start-up, small MOUSs, a busy machine

The CASA runner kills the child's process group at that limit (a clear
CasaTimeout); the Airflow operators also bound the whole task by it plus a
grace (`task_bound`), so a step that hangs outside CASA ends too.
"""
from __future__ import annotations

import os
from pathlib import Path

from .member import Member

GB = 1024 ** 3


def step_timeout(size_bytes, per_gb: float, min_s: float) -> float:
    """Seconds a step on `size_bytes` of data may take: never below `min_s`."""
    size = max(0, int(size_bytes or 0))
    return float(max(float(min_s), size / GB * float(per_gb)))


def task_bound(step_s: float) -> float:
    """The Airflow execution_timeout of a task whose step limit is `step_s`: a little longer,
    so the CASA runner's own limit fires first and says what timed out."""
    return step_s + max(60.0, 0.1 * step_s)


def tree_bytes(path) -> int:
    """Bytes of the regular files under `path` (links not followed); 0 if absent."""
    total = 0
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    for root, _dirs, files in os.walk(p):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:
                continue
            total += st.st_size
    return total


def raw_bytes(member_dir) -> int:
    """The size of a member folder's raw ASDMs (raw/), what the CASA steps' time grows with
    (a Member, or the folder's path)."""
    return tree_bytes(Member.coerce(member_dir).raw)


def casa_timeout(member_dir, settings) -> float:
    """The CASA runner's limit for a step on this member folder (a Member, or its path)."""
    return step_timeout(raw_bytes(member_dir), settings.casa_timeout_s_per_gb, settings.min_timeout_s)


def stage_timeout(size_bytes, settings) -> float:
    """The limit of a staging step fetching `size_bytes` (the archive's listed sizes)."""
    return step_timeout(size_bytes, settings.stage_timeout_s_per_gb, settings.min_timeout_s)
