"""Run CASA in a child process, never inside the Airflow worker.

The child gets its own session (so its whole process group can be killed on
a timeout or when Airflow calls `on_kill`), the offline environment of
`casa.env`, and its output is streamed line by line into our logger so the
Airflow task log shows CASA as it works (the registry's launchers pass
`--log2term`, so that output holds the whole CASA log; the casa-*.log files
written in the working directory are recorded for publishing). A step fails when the child exits
non-zero, dies of a signal, prints a Python traceback, or logs a CASA SEVERE
line (except the stale-measures one, reported once at info). CASA's WARN lines
are logged at warning and SEVERE ones at error, so Airflow's level filter shows them. A pipeline
run is the exception: its weblog prints tracebacks and SEVERE lines while the
tasks succeed, so it is judged by its own task results (`strict=False`: the
output is still recorded, and a non-zero exit still fails).
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
from pathlib import Path

from ..errors import AlmaRegenError, CasaError, CasaKilled, CasaTimeout
from .env import child_env
from .sandbox import sandbox_for

log = logging.getLogger(__name__)

# SEVERE lines CASA logs although the step did not fail, each reported once per
# run at info. casadata's measures (2025-09) make CASA log the stale leap-second
# table (a message continued over several lines, all from MeasTable::dUTC) on
# almost every task; importasdm leaves an empty WEIGHT_SPECTRUM column that
# tclean reports as SEVERE before falling back to WEIGHT.
KNOWN_BENIGN = (
    (re.compile(r"MeasTable::dUTC|Leap second table TAI_UTC seems out-of-date|Measures tables .* out of date", re.I),
     "stale measures data in casadata (leap-second table out of date): not a failure"),
    (re.compile(r"getcell::WEIGHT_SPECTRUM.*no array in row"),
     "empty WEIGHT_SPECTRUM column (as importasdm leaves it): CASA uses WEIGHT instead"),
)
SEVERE = re.compile(r"\bSEVERE\b")
TRACEBACK = "Traceback (most recent call last)"
# Environment variables worth recording in a manifest (never secrets).
_RECORDED_ENV = ("CASASITECONFIG", "OMP_NUM_THREADS", "ALMA_REGEN_OFFLINE")
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
    cpu_s: float = 0.0  # user + system CPU of the child and what it waited for (bench/orchestration.py)
    severe: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    traceback: list = field(default_factory=list)
    casa_logs: list = field(default_factory=list)

    def as_dict(self):
        return asdict(self)


class CasaRunner:
    """One child at a time; `kill()` may be called from another thread or a signal handler."""

    def __init__(self, logger: logging.Logger | None = None, grace_s: float = _GRACE_S):
        self.log = logger or log
        self.grace_s = grace_s
        self._proc = None
        self._killed_by_us = False
        # Reentrant: Airflow calls on_kill from a signal handler, which may
        # interrupt this very thread while it holds the lock.
        self._lock = threading.RLock()

    def run(self, command, cwd, *, timeout=None, env=None, allow_severe=(), label=None,
            strict: bool = True) -> CasaRun:
        """Run `command` in `cwd`; return the record, or raise CasaError, CasaTimeout or
        CasaKilled with the record as `.run`.

        env: extra environment variables (recorded in the result).
        allow_severe: regexes of SEVERE lines that are expected, not failures.
        label: what to call the step in messages (default: the script name).
        strict: fail on a traceback or SEVERE line in the output; False for a run
          that judges itself (its exit status and a result file still count).
        """
        command = [str(c) for c in command]
        box = sandbox_for(cwd, command)  # SandboxUnavailable (one line) rather than a run without it
        environment = child_env(env, home=box.home, sandbox=box.mode)
        self.log.info("CASA runs in %s", box.describe())
        recorded = set(_RECORDED_ENV) | set(env or ()) | {"ALMA_REGEN_SANDBOX"}
        rec = CasaRun(command=command, cwd=str(cwd),
                      env={k: environment[k] for k in sorted(recorded) if k in environment})
        label = label or _script_name(command)
        self.log.info("CASA: %s (in %s)", " ".join(command), cwd)
        started_wall = time.time()
        t0 = time.monotonic()
        with self._lock:
            self._killed_by_us = False
            try:
                self._proc = proc = subprocess.Popen(
                    box.wrap(command), cwd=cwd, env=environment, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                )
            except OSError as exc:
                # A registry entry pointing at a removed CASA, or a missing working dir.
                raise CasaError(f"cannot start CASA ({label}): {exc}") from None
        pgid = proc.pid  # start_new_session: the child leads its own group
        # The output is read in a thread so that this one can wait for the
        # child itself: a grandchild holding the pipe open must not keep us
        # waiting after CASA has exited.
        pump = _Pump(proc.stdout, rec, self.log, [re.compile(a) for a in allow_severe])
        pump.start()
        timer = threading.Timer(timeout, self._kill_group, args=("timeout",)) if timeout else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            _, status, usage = _wait4(proc.pid)
        except BaseException:
            # This process is being stopped (Ctrl-C, a signal handler raising):
            # CASA must not outlive it.
            self._kill_group("interrupted")
            _wait4(proc.pid)
            raise
        finally:
            if timer:
                timer.cancel()
            with self._lock:
                self._proc = None
        proc.returncode = box.exit_code(os.waitstatus_to_exitcode(status))
        # Whatever the child left behind in its group (helpers, a stray
        # grandchild) ends with it, and is gone when run() returns.
        _signal_group(pgid, signal.SIGKILL)
        _wait_group_gone(pgid, limit_s=5.0)
        pump.join(self.grace_s)
        if pump.is_alive():
            self.log.warning("CASA output still open after the child exited (a process left its group?)")
        else:
            proc.stdout.close()
        rec.returncode = proc.returncode
        rec.duration_s = round(time.monotonic() - t0, 3)
        rec.max_rss_mb = round(usage.ru_maxrss / 1024, 1)
        rec.cpu_s = round(usage.ru_utime + usage.ru_stime, 2)
        rec.casa_logs = _casa_logs_since(cwd, started_wall)
        for denied in box.denials([*pump.tail, *rec.traceback]):  # what the sandbox refused, said once
            rec.warnings.append(denied)
            self.log.warning("%s", denied)
        try:
            self._judge(rec, timeout, label, list(pump.tail), strict)
        except AlmaRegenError as exc:
            exc.run = rec  # the record of a failed run still goes into calibration.json
            raise
        self.log.info("CASA finished in %.1f s, CPU %.1f s, peak memory %.0f MB", rec.duration_s, rec.cpu_s,
                      rec.max_rss_mb)
        return rec

    def _judge(self, rec: CasaRun, timeout, label, tail, strict=True):
        if self._killed_by_us == "timeout":
            raise CasaTimeout(f"CASA ({label}) ran past its {timeout} s limit and was killed with its process group")
        if self._killed_by_us == "kill":
            raise CasaKilled(f"CASA ({label}) was stopped on request")
        if rec.returncode is not None and rec.returncode < 0:
            sig = signal.Signals(-rec.returncode).name
            raise CasaKilled(f"CASA ({label}) was killed by {sig} (out of memory or worker shutdown?)")
        quote = rec.traceback[-6:] or rec.severe[-5:] or tail[-5:]
        if rec.returncode != 0:
            raise CasaError(f"CASA ({label}) exited with status {rec.returncode}: " + " | ".join(quote))
        if not strict:
            if rec.traceback or rec.severe:
                self.log.warning("CASA (%s) printed %d traceback line(s) and %d SEVERE line(s); not judged "
                                 "here: the run is judged by its own results", label, len(rec.traceback),
                                 len(rec.severe))
            return
        if rec.traceback:
            raise CasaError(f"CASA ({label}) raised an exception: " + " | ".join(rec.traceback[-6:]))
        if rec.severe:
            raise CasaError(f"CASA ({label}) logged {len(rec.severe)} SEVERE line(s): " + " | ".join(rec.severe[:5]))

    def kill(self):
        """Stop the child and everything it started (Airflow's on_kill)."""
        self._kill_group("kill")

    def _kill_group(self, why):
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            self._killed_by_us = self._killed_by_us or why
        pgid = proc.pid
        self.log.warning("stopping CASA process group %d (%s)", pgid, why)
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline:
            if not group_members(pgid):
                return
            time.sleep(0.1)
        _signal_group(pgid, signal.SIGKILL)


class _Pump(threading.Thread):
    """Streams the child's output into the logger, line by line, and keeps what matters."""

    def __init__(self, stream, rec, logger, allow):
        super().__init__(name="casa-output", daemon=True)
        self.stream, self.rec, self.log, self.allow = stream, rec, logger, allow
        self.tail = deque(maxlen=40)

    def run(self):
        in_tb = False
        rec = self.rec
        for raw in iter(self.stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.tail.append(line)
            benign = next((msg for pattern, msg in KNOWN_BENIGN if pattern.search(line)), None)
            if benign:
                # Known and harmless: said once per run, at info (not an operator's concern).
                if benign not in rec.warnings:
                    rec.warnings.append(benign)
                    self.log.info("CASA (known, harmless): %s", benign)
                continue
            level = _level(line)
            if level == logging.ERROR and any(a.search(line) for a in self.allow):
                level = logging.WARNING  # a SEVERE line the caller expects: not a failure
            elif level == logging.ERROR:
                rec.severe.append(line.strip())
            # Airflow's log view filters by these levels: WARN and SEVERE must not hide in info.
            self.log.log(level, "%s", line)
            if TRACEBACK in line:
                in_tb = True
            if in_tb:
                rec.traceback.append(line)
                # The exception line itself is the first one not indented.
                if line and not line.startswith((" ", "\t", TRACEBACK)):
                    in_tb = False


# CASA's log lines (--log2term and casa-*.log): "date time<TAB>PRIORITY<TAB>origin<TAB>message".
_PRIORITY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+(SEVERE|WARN)\s")


def _level(line: str) -> int:
    """The Python log level of one line of CASA output: WARN -> warning, SEVERE -> error."""
    m = _PRIORITY.match(line)
    if m:
        return logging.ERROR if m.group(1) == "SEVERE" else logging.WARNING
    # A SEVERE not in CASA's log format (a script's own message) still counts as one.
    return logging.ERROR if SEVERE.search(line) else logging.INFO


def _wait4(pid):
    return os.wait4(pid, 0)


def _script_name(command) -> str:
    """The script a CASA command runs (after -c, else the first .py), for messages."""
    if "-c" in command[:-1]:
        return os.path.basename(command[command.index("-c") + 1])
    for c in command[1:]:
        if c.endswith(".py"):
            return os.path.basename(c)
    return os.path.basename(command[0]) if command else "CASA"


def _casa_logs_since(cwd, t0) -> list:
    """The casa-*.log files CASA wrote in `cwd` during the run (for publishing)."""
    try:
        return sorted(str(p) for p in Path(cwd).glob("casa-*.log") if p.stat().st_mtime >= t0 - 1)
    except OSError:
        return []


def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_group_gone(pgid, limit_s: float):
    """SIGKILL is asynchronous: wait (bounded) until the group has no live member."""
    deadline = time.monotonic() + limit_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)


def group_members(pgid) -> list:
    """The live (not zombie) processes of group `pgid`.

    kill(-pgid, 0) would count zombies, and a leader nobody has reaped yet is
    one; /proc tells them apart. Without /proc, fall back to kill(-pgid, 0).
    """
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except ProcessLookupError:
            return []
    members = []
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(d.name))
    return members
