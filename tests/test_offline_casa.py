"""CASA never touches the network.

Two independent proofs, both with the environment the runner gives every CASA
child (CASASITECONFIG -> include/casa/casasiteconfig.py, ALMA_REGEN_OFFLINE=1):
- the child records every network-ish audit event (a recorder installed before
  include/casa_scripts/casa_boot.py, whose own hook then refuses the event):
  importing casatools/casatasks, using the measures tool and running
  casaconfig's auto-update check must record none;
- the same child runs under `unshare -rn`, an empty network namespace, which
  also catches what C++ code inside casatools might try behind Python's back:
  it must still import and work.
A negative control proves the audit hook really refuses a socket connection
to a server that is reachable without it, so these tests can fail.
"""
import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import pytest

from alma_regen.casa.runner import CasaRunner
from alma_regen.paths import include_dir

PY = sys.executable

# The recorder goes first: casa_boot's hook raises, and hooks after a raising one are not called.
CHILD = """
import json, os, sys
attempts = []
NET = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
       "socket.sendto", "socket.sendmsg", "urllib.Request")
def record(event, args):
    if event in NET and not (event == "socket.connect" and getattr(args[0], "family", None) == 1):
        attempts.append(f"{event} {args[1:]!r}")
sys.addaudithook(record)
sys.path.insert(0, os.path.join(os.environ["ALMA_REGEN_INCLUDE"], "casa_scripts"))
import casa_boot  # noqa: F401
import casatools, casatasks, casadata
from casaconfig import config, do_auto_updates
do_auto_updates(config)  # the check casatools runs at import, once more on purpose
me = casatools.measures()
epoch = me.epoch("utc", "today")
assert epoch["refer"] == "UTC", epoch
print("RESULT " + json.dumps({
    "measurespath": config.measurespath, "casadata": casadata.datapath,
    "measures_auto_update": config.measures_auto_update, "data_auto_update": config.data_auto_update,
    "attempts": attempts, "version": casatools.version_string(),
}))
"""


def run_child(tmp_path, prefix=()):
    script = tmp_path / "offline.py"
    script.write_text(CHILD)
    lines = []

    class Handler(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler = Handler()
    logger = logging.getLogger("test_offline_casa")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        CasaRunner(logger=logger).run([*prefix, PY, script], tmp_path, timeout=300)
    finally:
        logger.removeHandler(handler)
    [result] = [json.loads(m[len("RESULT "):]) for m in lines if m.startswith("RESULT ")]
    return result


def check(result):
    assert result["attempts"] == []
    assert os.path.realpath(result["measurespath"]) == os.path.realpath(result["casadata"])
    assert result["measures_auto_update"] is False
    assert result["data_auto_update"] is False
    assert result["version"] == "6.7.0-31"


@pytest.mark.casa
def test_casa_imports_and_works_without_any_network_attempt(tmp_path):
    check(run_child(tmp_path))


def _unshare_works() -> str:
    if not shutil.which("unshare"):
        return "unshare(1) is not installed"
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare -rn is not permitted here (no user namespaces?): {probe.stderr.strip()}"
    return ""


@pytest.mark.casa
@pytest.mark.skipif(bool(_unshare_works()), reason=_unshare_works() or "n/a")
def test_casa_works_in_an_empty_network_namespace(tmp_path):
    check(run_child(tmp_path, prefix=("unshare", "-rn")))


def test_audit_hook_refuses_a_reachable_server(tmp_path):
    """Negative control: the same connect succeeds without the hook and fails with it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    code = (f"import sys; sys.path.insert(0, {str(include_dir() / 'casa_scripts')!r}); import casa_boot, socket; "
            f"socket.create_connection(('127.0.0.1', {port}), timeout=10); print('CONNECTED')")
    try:
        env = {k: v for k, v in os.environ.items() if k != "ALMA_REGEN_OFFLINE"}
        plain = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=env, timeout=60)
        guarded = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60,
                                 env={**env, "ALMA_REGEN_OFFLINE": "1"})
    finally:
        server.close()
    assert plain.returncode == 0 and "CONNECTED" in plain.stdout
    assert guarded.returncode != 0 and "CONNECTED" not in guarded.stdout
    assert "NetworkRefused" in guarded.stderr and "must run offline" in guarded.stderr
