"""The CASA runner: process handling, failure detection, streaming, records.

Most tests use small Python scripts written into tmp_path as stand-ins for
CASA: what is tested is how the runner treats a child process (groups,
signals, output, exit status), which does not depend on what the child
computes. One test runs real casatools in a child.
"""
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from alma_regen.casa.registry import load_registry
from alma_regen.casa.runner import CasaRunner
from alma_regen.errors import CasaError, CasaKilled, CasaTimeout
from alma_regen.paths import site_config

PY = sys.executable
RUNNER_LOG = "alma_regen.casa.runner"


@pytest.fixture
def unsandboxed(monkeypatch):
    """The process-group tests read the pids a child writes: inside the sandbox's pid
    namespace those are not the host's. test_sandbox.py checks the kill sandboxed."""
    monkeypatch.setenv("ALMA_REGEN_SANDBOX", "none")


def script(tmp_path, name, body) -> Path:
    p = tmp_path / name
    p.write_text(body)
    return p


def alive(pid) -> bool:
    """True while `pid` runs; a zombie nobody reaps (orphans in a container) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_for_file(path, limit=60):
    deadline = time.monotonic() + limit
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)
    return path.read_text()


# A child that starts a grandchild (which ignores SIGTERM, as a busy CASA
# helper may), writes both pids, and hangs.
HANG = """
import os, signal, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
print("hanging", flush=True)
time.sleep(600)
"""


def test_timeout_kills_the_whole_process_group(tmp_path, unsandboxed):
    pids = tmp_path / "pids"
    runner = CasaRunner(grace_s=1)
    with pytest.raises(CasaTimeout, match="hang.py.*killed with its process group"):
        runner.run([PY, script(tmp_path, "hang.py", HANG), pids], tmp_path, timeout=3)
    child, grandchild = map(int, pids.read_text().split())
    assert not alive(child)
    assert not alive(grandchild)


def test_kill_from_another_thread_stops_the_group(tmp_path, unsandboxed):
    """What Airflow's on_kill does while execute() waits on CASA."""
    pids = tmp_path / "pids"
    runner = CasaRunner(grace_s=1)

    def on_kill():
        wait_for_file(pids)
        runner.kill()

    killer = threading.Thread(target=on_kill)
    killer.start()
    with pytest.raises(CasaKilled, match="stopped on request"):
        runner.run([PY, script(tmp_path, "hang.py", HANG), pids], tmp_path, timeout=120)
    killer.join()
    child, grandchild = map(int, pids.read_text().split())
    assert not alive(child)
    assert not alive(grandchild)


def test_severe_line_fails_a_step_that_exits_0(tmp_path):
    line = "2026-01-01 00:00:00\tSEVERE\tapplycal::Calibrater::setapply\tCaltable uid.ms.bp.tbl does not exist"
    s = script(tmp_path, "severe.py", f"print({line!r})\nprint('done')\n")
    with pytest.raises(CasaError, match="1 SEVERE line") as exc:
        CasaRunner().run([PY, s], tmp_path)
    assert "Caltable uid.ms.bp.tbl does not exist" in str(exc.value)


def test_expected_severe_lines_can_be_allowed(tmp_path):
    s = script(tmp_path, "severe.py", "print('x\\tSEVERE\\tflagmanager\\tno flag versions yet')\n")
    rec = CasaRunner().run([PY, s], tmp_path, allow_severe=[r"no flag versions"])
    assert rec.severe == []


def test_python_exception_fails_with_the_traceback_quoted(tmp_path):
    s = script(tmp_path, "boom.py", "def f():\n    raise RuntimeError('boom in the child')\nf()\n")
    with pytest.raises(CasaError, match="exited with status 1") as exc:
        CasaRunner().run([PY, s], tmp_path)
    assert "Traceback (most recent call last)" in str(exc.value)
    assert "RuntimeError: boom in the child" in str(exc.value)


def test_exception_printed_by_a_shell_that_exits_0_still_fails(tmp_path):
    # casashell -c reports a script's exception and may still exit 0.
    s = script(tmp_path, "caught.py", "import traceback\ntry:\n    1/0\nexcept Exception:\n"
                                      "    traceback.print_exc()\nprint('after')\n")
    with pytest.raises(CasaError, match="raised an exception") as exc:
        CasaRunner().run([PY, s], tmp_path)
    assert "ZeroDivisionError: division by zero" in str(exc.value)


def test_nonzero_exit_status_is_quoted(tmp_path):
    s = script(tmp_path, "exit3.py", "print('last words of CASA')\nraise SystemExit(3)\n")
    with pytest.raises(CasaError, match=r"exit3.py\) exited with status 3: .*last words of CASA"):
        CasaRunner().run([PY, s], tmp_path)


# What a pipeline run prints after its tasks succeeded: the weblog's plotms
# traceback and a SEVERE line, then the exit status of the script.
WEBLOG_NOISE = """import sys, traceback
print('x\\tSEVERE\\tplotms::::\\tcannot open display')
try:
    raise RuntimeError('plotms: no DISPLAY')
except Exception:
    traceback.print_exc()
print('ALMA scriptForPI completed.')
sys.exit(int(sys.argv[1]))
"""


def test_a_run_that_judges_itself_is_not_failed_on_printed_tracebacks(tmp_path):
    s = script(tmp_path, "weblog.py", WEBLOG_NOISE)
    with pytest.raises(CasaError, match="raised an exception"):
        CasaRunner().run([PY, s, 0], tmp_path)  # strict by default
    rec = CasaRunner().run([PY, s, 0], tmp_path, strict=False)
    assert rec.returncode == 0
    assert any("RuntimeError: plotms: no DISPLAY" in line for line in rec.traceback)
    assert len(rec.severe) == 1, "the output is still recorded"


def test_a_run_that_judges_itself_still_fails_on_a_nonzero_exit(tmp_path):
    s = script(tmp_path, "weblog.py", WEBLOG_NOISE)
    with pytest.raises(CasaError, match="exited with status 2"):
        CasaRunner().run([PY, s, 2], tmp_path, strict=False)


def test_stale_leap_second_severe_is_said_once_at_info_not_a_failure(tmp_path, caplog):
    stale = ("2026-01-01 00:00:00\tSEVERE\tMeasTable::dUTC(Double)\t"
             "Leap second table TAI_UTC seems out-of-date. Until the table is updated (see the CASA "
             "documentation or your system admin), times and coordinates derived from UTC could be "
             "wrong by 1s or more.")
    s = script(tmp_path, "stale.py", f"for _ in range(3):\n    print({stale!r})\nprint('task done')\n")
    with caplog.at_level(logging.INFO, logger=RUNNER_LOG):
        rec = CasaRunner().run([PY, s], tmp_path)
    assert rec.returncode == 0 and rec.severe == []
    assert len(rec.warnings) == 1 and "stale measures" in rec.warnings[0]
    # Known and harmless: recorded once, logged once at info (not a warning on every task).
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    said = [r.getMessage() for r in caplog.records if "known, harmless" in r.getMessage()]
    assert said == ["CASA (known, harmless): " + rec.warnings[0]]


def test_output_is_streamed_line_by_line_while_the_child_runs(tmp_path, caplog):
    """The child waits for proof that its first line reached the logger before it goes on."""
    seen = tmp_path / "seen"

    class Answer(logging.Handler):
        def emit(self, record):
            if record.getMessage() == "first line":
                seen.write_text("yes")

    s = script(tmp_path, "talk.py", f"""
import os, sys, time
print("first line", flush=True)
deadline = time.monotonic() + 60
while not os.path.exists({str(seen)!r}):
    if time.monotonic() > deadline:
        sys.exit("the runner did not stream the first line")
    time.sleep(0.05)
print("second line")
print("third line")
""")
    handler = Answer()
    logging.getLogger(RUNNER_LOG).addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger=RUNNER_LOG):
            CasaRunner().run([PY, s], tmp_path)
    finally:
        logging.getLogger(RUNNER_LOG).removeHandler(handler)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().endswith(" line")]
    assert lines == ["first line", "second line", "third line"]


def test_memory_and_duration_are_recorded(tmp_path):
    s = script(tmp_path, "mem.py", "block = bytearray(200 * 1024 * 1024)\nblock[::4096] = b'x' * len(block[::4096])\n")
    rec = CasaRunner().run([PY, s], tmp_path)
    assert rec.max_rss_mb >= 200
    assert rec.duration_s > 0
    d = rec.as_dict()
    assert d["command"] == [PY, str(s)] and d["cwd"] == str(tmp_path)


def test_offline_environment_is_always_applied(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    monkeypatch.setenv("CASASITECONFIG", "/home/user/my-casa-config.py")
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "secret")
    s = script(tmp_path, "env.py", "import json, os\nprint('ENV', json.dumps(dict(os.environ)))\n")
    with caplog.at_level(logging.INFO, logger=RUNNER_LOG):
        rec = CasaRunner().run([PY, s], tmp_path, env={"SPACESAVING": 1})
    [dump] = [m[4:] for m in caplog.messages if m.startswith("ENV ")]
    env = json.loads(dump)
    assert env["CASASITECONFIG"] == str(site_config()) and Path(env["CASASITECONFIG"]).is_file()
    assert env["ALMA_REGEN_OFFLINE"] == "1"
    assert env["SPACESAVING"] == "1"
    assert "PYTHONPATH" not in env and not any(k.startswith("AIRFLOW__") for k in env)
    assert rec.env["CASASITECONFIG"] == str(site_config()) and rec.env["SPACESAVING"] == "1"


@pytest.mark.casa
def test_real_casatools_runs_in_a_child(tmp_path, caplog):
    s = script(tmp_path, "version.py", """
import os, sys
sys.path.insert(0, os.path.join(os.environ["ALMA_REGEN_INCLUDE"], "casa_scripts"))
import casa_boot  # noqa: F401  (offline guard, no user config)
import casatools
print("CASA_VERSION", casatools.version_string())
""")
    casa = load_registry(config="").modular()
    with caplog.at_level(logging.INFO, logger=RUNNER_LOG):
        rec = CasaRunner().run(casa.command(s, shell=False), tmp_path)
    assert f"CASA_VERSION {casa.version}" in caplog.messages
    assert str(casa.version) == "6.7.0-31"
    # casatools writes its log into the working directory: recorded for publishing.
    assert rec.casa_logs and all(Path(p).parent == tmp_path for p in rec.casa_logs)


def test_a_raising_signal_handler_takes_the_group_down(tmp_path, unsandboxed):
    """Airflow's SIGTERM handler calls on_kill, then raises in the thread that waits on CASA."""
    pids = tmp_path / "pids"
    runner = CasaRunner(grace_s=1)

    class Terminated(Exception):
        pass

    def handler(signum, frame):
        runner.kill()
        raise Terminated()

    previous = signal.signal(signal.SIGUSR1, handler)
    main = threading.get_ident()
    sender = threading.Thread(target=lambda: (wait_for_file(pids), signal.pthread_kill(main, signal.SIGUSR1)))
    sender.start()
    try:
        with pytest.raises(Terminated):
            runner.run([PY, script(tmp_path, "hang.py", HANG), pids], tmp_path, timeout=120)
    finally:
        sender.join()
        signal.signal(signal.SIGUSR1, previous)
    child, grandchild = map(int, pids.read_text().split())
    assert not alive(child)
    assert not alive(grandchild)


def test_the_record_travels_with_the_failure(tmp_path):
    s = script(tmp_path, "exit3.py", "raise SystemExit(3)\n")
    with pytest.raises(CasaError) as exc:
        CasaRunner().run([PY, s], tmp_path)
    assert exc.value.run.returncode == 3 and exc.value.run.command == [PY, str(s)]


def test_a_casa_that_cannot_start_is_a_clear_error(tmp_path):
    with pytest.raises(CasaError, match="cannot start CASA.*No such file"):
        CasaRunner().run([str(tmp_path / "no-casa" / "bin" / "casa"), "-c", "x.py"], tmp_path)
