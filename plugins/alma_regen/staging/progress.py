"""Progress lines for long downloads: bytes, rate, ETA, every few seconds (what the Airflow log shows)."""
from __future__ import annotations

import logging
import time

from .errors import TooSlowError

log = logging.getLogger("alma_regen.staging")


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"


class Progress:
    def __init__(self, name: str, total: int, start: int = 0, interval: float = 5.0):
        self.name, self.total, self.interval = name, total, interval
        self.t0 = self.last = time.monotonic()
        self.start = start  # bytes already on disk when this run began (a resume)

    def update(self, offset: int) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        rate = (offset - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - offset) / rate if rate > 0 else float("inf")
        pct = 100.0 * offset / self.total if self.total else 100.0
        log.info("%s: %s of %s (%.0f%%), %s/s, ETA %s", self.name, human(offset), human(self.total), pct,
                 human(rate), f"{eta:.0f} s" if eta != float("inf") else "?")

    def rate(self, offset: int) -> float:
        return (offset - self.start) / max(time.monotonic() - self.t0, 1e-9)


class RateFloor:
    """Give up on a source that sends less than `min_bps` over a whole `window_s` (0: never).

    Windows follow each other (not sliding): a trickle is caught within two windows.
    The time of reconnects and retries counts, so a server that keeps dropping after a
    few bytes is caught as well as one that trickles.
    """

    def __init__(self, name: str, min_bps: float, window_s: float):
        self.name, self.min_bps, self.window = name, min_bps, max(window_s, 1e-3)
        self.total = 0
        self.t_mark, self.b_mark = time.monotonic(), 0

    def add(self, n: int) -> None:
        self.total += n
        self.check()

    def check(self) -> None:
        if self.min_bps <= 0:
            return
        now = time.monotonic()
        elapsed = now - self.t_mark
        if elapsed < self.window:
            return
        got = self.total - self.b_mark
        if got < self.min_bps * elapsed:
            raise TooSlowError(f"{self.name}: the source sent {human(got)} in {elapsed:.0f} s, below the floor "
                               f"of {human(self.min_bps)}/s; giving up (partial data kept for a resume)")
        self.t_mark, self.b_mark = now, self.total
