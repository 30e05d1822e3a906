"""A staging process killed mid-download resumes from its on-disk checkpoint when run again."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import archive_builder as ab
import pytest
from fixtures_servers import cli_env

from alma_regen import naming
from alma_regen.staging import member_path


def test_kill_then_rerun_resumes_instead_of_restarting(tmp_path, archive_server):
    arc = ab.build_archive(tmp_path / "archive", ebs=ab.EBS[:1], n_binaries=4, binary_size=4_000_000)
    name = arc.asdm_name(arc.ebs[0])
    size = arc.path(name).stat().st_size
    srv = archive_server(arc.dir)
    srv.faults(file=name, slow_bps=2_500_000)  # slow enough to kill it half-way
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "alma_regen.cli", "stage", arc.mous, "--source", srv.url,
           "--workdir", str(work), "--progress-interval", "1"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        deadline = time.monotonic() + 60
        while srv.bytes_sent(name) < 0.45 * size:
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "download did not progress"
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)  # no clean-up: as an OOM kill or a lost worker
        first.communicate()
    sent_before = srv.bytes_sent(name)
    partial = member_path(work, arc.mous) / "raw" / f".{naming.asdm_dir(arc.ebs[0])}.partial"
    state = json.loads((partial / "state.json").read_text())
    assert 0 < state["offset"] < size

    srv.faults()  # no more throttling
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=cli_env())
    assert second.returncode == 0, second.stderr
    assert "resuming at byte" in second.stderr
    refetched = srv.bytes_sent(name) - size
    print(f"re-fetched {refetched} of {size} bytes ({100 * refetched / size:.1f}%)")
    assert refetched < 0.10 * size, (refetched, sent_before, state["offset"])
    summary = json.loads(second.stdout)
    assert ab.staged_member(member_path(work, arc.mous)) == ab.expected_member(arc)
    import hashlib
    asdm = next(f for f in summary["files"] if f["file"] == name)
    assert asdm["sha256"] == hashlib.sha256(arc.path(name).read_bytes()).hexdigest()
    assert asdm["fetched"] < size  # this run fetched only the rest
    assert not partial.exists()
