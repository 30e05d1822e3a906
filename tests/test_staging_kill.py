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


def _wait_for(srv, name, nbytes, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while srv.bytes_sent(name) < nbytes:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "download did not progress"
        time.sleep(0.05)


def test_one_ctrl_c_stops_staging_now_and_a_second_run_resumes(tmp_path, archive_server):
    # Two EBs of ~16 MB at 1 MB/s, one at a time: after Ctrl-C at ~20% of the first,
    # finishing the queued work would take ~30 s more. Expected decision: stop at once
    # (the second EB never requested, the first cut short), exit non-zero, partial kept.
    arc = ab.build_archive(tmp_path / "archive", n_binaries=4, binary_size=4_000_000)
    first_eb, second_eb = (arc.asdm_name(eb) for eb in sorted(arc.ebs))
    size = arc.path(first_eb).stat().st_size
    srv = archive_server(arc.dir)
    srv.faults(slow_bps=1_000_000)
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "alma_regen.cli", "stage", arc.mous, "--source", srv.url,
           "--workdir", str(work), "--parallel", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        _wait_for(srv, first_eb, 0.2 * size, proc)
        proc.send_signal(signal.SIGINT)
        # Generous: 15 s, half of what the remaining transfer needs at this rate.
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0 and "interrupted" in err and "Traceback" not in err, err
    assert srv.bytes_sent(first_eb) < size and srv.bytes_sent(second_eb) == 0
    partial = member_path(work, arc.mous) / "raw" / f".{naming.asdm_dir(arc.ebs[0])}.partial"
    state = json.loads((partial / "state.json").read_text())
    assert 0 < state["offset"] < size  # the partial data are kept for the resume

    srv.faults()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=cli_env())
    assert second.returncode == 0, second.stderr
    assert "resuming at byte" in second.stderr
    assert ab.staged_member(member_path(work, arc.mous)) == ab.expected_member(arc)


def test_cli_gives_up_on_a_source_below_the_floor_rate_and_resumes_later(tmp_path, archive_server):
    arc = ab.build_archive(tmp_path / "archive", ebs=ab.EBS[:1], n_binaries=2, binary_size=1_000_000)
    name = arc.asdm_name(arc.ebs[0])
    size = arc.path(name).stat().st_size
    srv = archive_server(arc.dir)
    srv.faults(file=name, slow_bps=20_000)  # a trickle: 20 KB/s
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "alma_regen.cli", "stage", arc.mous, "--source", srv.url, "--workdir", str(work)]
    r = subprocess.run(cmd + ["--min-rate", "200000", "--min-rate-window", "2"], capture_output=True, text=True,
                       timeout=120, env=cli_env())
    # Expected decision: a transient error in one line, the partial state kept.
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "below the floor" in errors[0], r.stderr
    assert srv.bytes_sent(name) < size
    partial = member_path(work, arc.mous) / "raw" / f".{naming.asdm_dir(arc.ebs[0])}.partial"
    assert json.loads((partial / "state.json").read_text())["offset"] > 0

    srv.faults()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=cli_env())
    assert again.returncode == 0 and "resuming at byte" in again.stderr, again.stderr
    assert ab.staged_member(member_path(work, arc.mous)) == ab.expected_member(arc)
