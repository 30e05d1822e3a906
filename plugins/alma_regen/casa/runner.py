"""Run CASA in a child process, never inside the Airflow worker.

The child gets its own session (so its whole process group can be killed on
a timeout or when Airflow calls `on_kill`), the offline environment of
`casa.env`, and its output is streamed line by line into our logger so the
Airflow task log shows CASA as it works. A step fails when the child exits
non-zero, dies of a signal, prints a Python traceback, or logs a CASA SEVERE
line (except the stale-measures one, reported once as a warning).
"""
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field

from ..errors import CasaError, CasaKilled, CasaTimeout
from .env import child_env

log = logging.getLogger(__name__)

# casadata's measures (2025-09) make CASA log this SEVERE line on almost every
# task. It is about stale measures data, not a failed step.
STALE_MEASURES = re.compile(r"Leap second table TAI_UTC seems out-of-date|Measures tables .* out of date", re.I)
SEVERE = re.compile(r"\bSEVERE\b")
TRACEBACK = "Traceback (most recent call last)"
# Environment variables worth recording in a manifest (never secrets).
_RECORDED_ENV = ("CASASITECONFIG", "OMP_NUM_THREADS", "ALMA_REGEN_OFFLINE", "SPACESAVING", "DOSPLIT", "DOCONTSUB")
_GRACE_S = 10


@dataclass
class CasaRun:
    """What happened: recorded in calibration.json and the manifest."""

    command: list
    cwd: str
    env: dict
    returncode: int | None = None
    duration_s: float = 0.0
    max_rss_mb: float = 0.0
    severe: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    traceback: list = field(default_factory=list)

    def as_dict(self):
        return asdict(self)


class CasaRunner:
    """One child at a time; `kill()` may be called from another thread."""

    def __init__(self, logger: logging.Logger | None = None, grace_s: float = _GRACE_S):
        self.log = logger or log
        self.grace_s = grace_s
        self._proc = None
        self._killed_by_us = False
        self._lock = threading.Lock()

    def run(self, command, cwd, *, timeout=None, env=None, allow_severe=()) -> CasaRun:
        """Run `command` in `cwd`; return the record or raise a CasaError."""
        command = [str(c) for c in command]
        environment = child_env(env)
        rec = CasaRun(command=command, cwd=str(cwd),
                      env={k: environment[k] for k in _RECORDED_ENV if k in environment})
        self.log.info("CASA: %s (in %s)", " ".join(command), cwd)
        self._killed_by_us = False
        t0 = time.monotonic()
        with self._lock:
            self._proc = subprocess.Popen(
                command, cwd=cwd, env=environment, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            )
        proc = self._proc
        timer = threading.Timer(timeout, self._timeout) if timeout else None
        if timer:
            timer.daemon = True
            timer.start()
        tail = deque(maxlen=40)
        in_tb = False
        stale_seen = False
        allow = [re.compile(a) for a in allow_severe]
        try:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                tail.append(line)
                if STALE_MEASURES.search(line):
                    if not stale_seen:
                        stale_seen = True
                        msg = "stale measures data in casadata (leap-second table out of date): not a failure"
                        rec.warnings.append(msg)
                        self.log.warning("%s", msg)
                    continue
                self.log.info("%s", line)
                if SEVERE.search(line) and not any(a.search(line) for a in allow):
                    rec.severe.append(line.strip())
                if TRACEBACK in line:
                    in_tb = True
                if in_tb:
                    rec.traceback.append(line)
                    if line and not line.startswith((" ", "\t", TRACEBACK)):
                        in_tb = False
        finally:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if timer:
                timer.cancel()
            proc.stdout.close()
            with self._lock:
                self._proc = None
        rec.returncode = proc.returncode
        rec.duration_s = round(time.monotonic() - t0, 3)
        rec.max_rss_mb = round(usage.ru_maxrss / 1024, 1)
        self._judge(rec, timeout, list(tail))
        self.log.info("CASA finished in %.1f s, peak memory %.0f MB", rec.duration_s, rec.max_rss_mb)
        return rec

    def _judge(self, rec: CasaRun, timeout, tail):
        cmd = os.path.basename(rec.command[-1]) if rec.command else "CASA"
        if self._killed_by_us == "timeout":
            raise CasaTimeout(f"CASA ({cmd}) ran past its {timeout} s limit and was killed with its process group")
        if self._killed_by_us == "kill":
            raise CasaKilled(f"CASA ({cmd}) was stopped on request")
        if rec.returncode is not None and rec.returncode < 0:
            sig = signal.Signals(-rec.returncode).name
            raise CasaKilled(f"CASA ({cmd}) was killed by {sig} (out of memory or worker shutdown?)")
        quote = rec.traceback[-6:] or rec.severe[-5:] or tail[-5:]
        if rec.returncode != 0:
            raise CasaError(f"CASA ({cmd}) exited with status {rec.returncode}: " + " | ".join(quote))
        if rec.traceback:
            raise CasaError(f"CASA ({cmd}) raised an exception: " + " | ".join(rec.traceback[-6:]))
        if rec.severe:
            raise CasaError(f"CASA ({cmd}) logged {len(rec.severe)} SEVERE line(s): " + " | ".join(rec.severe[:5]))

    def _timeout(self):
        self._kill_group("timeout")

    def kill(self):
        """Stop the child and everything it started (Airflow's on_kill)."""
        self._kill_group("kill")

    def _kill_group(self, why):
        with self._lock:
            proc = self._proc
            if proc is None or proc.returncode is not None:
                return
            self._killed_by_us = why
            try:
                pgid = os.getpgid(proc.pid)
            except ProcessLookupError:
                return
        self.log.warning("stopping CASA process group %d (%s)", pgid, why)
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.1)
        _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def run_casa(command, cwd, **kw) -> CasaRun:
    """Convenience: one run with a fresh runner."""
    return CasaRunner().run(command, cwd, **kw)
