"""Issue 11, item 6: every staging and CASA step has a time limit from its data size and the
settings (stage_timeout_s_per_gb, casa_timeout_s_per_gb, min_timeout_s), and every setting in
config.py is read somewhere.

A hung CASA is a real CASA child: the delivery's scriptForImaging.py that never returns.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import archive_builder as ab
import pytest

from alma_regen import timeouts
from alma_regen.config import Settings

ROOT = Path(__file__).resolve().parents[1]
GB = 1024 ** 3


def test_step_timeout_grows_with_the_data_and_has_a_floor():
    assert timeouts.step_timeout(0, 600, 1800) == 1800
    assert timeouts.step_timeout(None, 600, 1800) == 1800
    assert timeouts.step_timeout(10 * GB, 600, 1800) == 6000
    assert timeouts.step_timeout(GB // 2, 3600, 60) == 1800
    # The Airflow bound is the step's limit and a grace, so the CASA runner's limit fires first.
    assert timeouts.task_bound(6000) == 6600 and timeouts.task_bound(100) == 160


def test_every_setting_is_read_somewhere():
    """A setting nobody reads is a promise nobody keeps (the three timeouts were never read)."""
    code = ""
    for base in ("plugins/alma_regen", "dags"):
        for p in (ROOT / base).rglob("*.py"):
            if p.name != "config.py":
                code += p.read_text()
    unread = [f.name for f in fields(Settings) if not re.search(rf"\.{f.name}\b", code)]
    assert unread == []


def test_parse_time_settings_are_not_taken_from_the_variable(monkeypatch, caplog):
    """The DAG bakes workdir (and the other PARSE_TIME knobs) into its tasks when it is parsed:
    a task, a listener and the scheduler must all see that value, not the Variable's."""
    import logging

    from alma_regen.config import PARSE_TIME, with_variable
    monkeypatch.setenv("ALMA_REGEN_WORKDIR", "/env/work")
    with caplog.at_level(logging.WARNING):
        s = with_variable(json.dumps({"workdir": "/elsewhere", "raw_cache_gb": 5, "bulk_max_runs": 7}))
    assert (s.workdir, s.raw_cache_gb, s.bulk_max_in_flight) == ("/env/work", 5.0, 7)
    assert "cannot change workdir" in caplog.text
    assert PARSE_TIME <= {f.name for f in fields(Settings)}


def test_the_settings_are_read_once_per_task_try(monkeypatch):
    """runtime_settings reads the `alma_regen` Variable once per task try (a round trip each time in
    a task): a change reaches the next try, not the rest of this one; outside a task, every call
    reads it. Airflow's own context (set_current_context) and Variable lookup (the environment's)."""
    from airflow.sdk.execution_time.context import set_current_context

    from alma_regen.config import runtime_settings
    RUN = "manual__2026-12-06T08:00:00+00:00"
    monkeypatch.setenv("AIRFLOW_VAR_ALMA_REGEN", json.dumps({"raw_cache_gb": 5, "workdir": "/elsewhere"}))
    monkeypatch.setenv("ALMA_REGEN_WORKDIR", "/env/work")

    def ti(**kw):
        return SimpleNamespace(**{"dag_id": "alma_regenerate", "run_id": RUN, "task_id": "publish",
                                  "map_index": -1, "try_number": 1, **kw})

    with set_current_context({"ti": ti()}):
        s = runtime_settings()
        assert (s.raw_cache_gb, s.workdir) == (5.0, "/env/work")  # PARSE_TIME: the environment's
        monkeypatch.setenv("AIRFLOW_VAR_ALMA_REGEN", json.dumps({"raw_cache_gb": 7}))
        assert runtime_settings() is s  # the same try: not read again
    with set_current_context({"ti": ti(try_number=2)}):
        assert runtime_settings().raw_cache_gb == 7.0  # the next try reads it
    with set_current_context({"ti": ti(task_id="stage_asdm", map_index=1)}):
        assert runtime_settings().raw_cache_gb == 7.0
    monkeypatch.setenv("AIRFLOW_VAR_ALMA_REGEN", json.dumps({"raw_cache_gb": 9}))
    assert runtime_settings().raw_cache_gb == 9.0  # no task: read at every call
    monkeypatch.setenv("AIRFLOW_VAR_ALMA_REGEN", json.dumps({"raw_cache_gb": 11}))
    assert runtime_settings().raw_cache_gb == 11.0


def raw_member(tmp_path, raw_size: int) -> Path:
    member = tmp_path / "work" / "member.uid___A001_X3001_X9"
    (member / "raw" / "uid___A002_X1_X1.asdm.sdm" / "ASDMBinary").mkdir(parents=True)
    with open(member / "raw" / "uid___A002_X1_X1.asdm.sdm" / "ASDMBinary" / "b", "wb") as f:
        f.truncate(raw_size)  # sparse: the size is what counts
    return member


def test_casa_operators_take_their_limit_from_the_raw_data(tmp_path, monkeypatch):
    from alma_regen.airflow.operators.calibration import FinishCalibrationOperator, RestoreEbOperator
    from alma_regen.airflow.operators.imaging import FidelityOperator, NativeImagingUnitOperator
    member = raw_member(tmp_path, 3 * GB)
    monkeypatch.setenv("ALMA_REGEN_CASA_TIMEOUT_S_PER_GB", "100")
    monkeypatch.setenv("ALMA_REGEN_MIN_TIMEOUT_S", "60")
    ops = [RestoreEbOperator(task_id="r", member_dir=str(member), eb_uid="uid://A002/X1/X1"),
           FinishCalibrationOperator(task_id="f", member_dir=str(member)),
           NativeImagingUnitOperator(task_id="u", member_dir=str(member), unit={"id": "x"}),
           FidelityOperator(task_id="q", member_dir=str(member))]
    for op in ops:
        assert op.execution_timeout is None  # what the DAG gives: fixed before the size is known
        op.pre_execute(context={})
        assert op.casa_limit() == 300.0, op.task_id                       # 3 GB x 100 s
        assert op.execution_timeout == timedelta(seconds=360), op.task_id  # + the grace
        assert op._options().timeout_s == 300.0 if hasattr(op, "_options") else True
    # An explicit limit on the operator, and an execution_timeout the DAG author set, are kept.
    op = RestoreEbOperator(task_id="r2", member_dir=str(member), eb_uid="x", casa_timeout_s=42,
                           execution_timeout=timedelta(hours=9))
    op.pre_execute(context={})
    assert op.casa_limit() == 42 and op.execution_timeout == timedelta(hours=9)
    # A small MOUS gets the floor.
    small = raw_member(tmp_path / "s", 1000)
    op = RestoreEbOperator(task_id="r3", member_dir=str(small), eb_uid="x")
    op.pre_execute(context={})
    assert op.casa_limit() == 60.0 and op.execution_timeout == timedelta(seconds=120)


def test_staging_operators_take_their_limit_from_the_listed_sizes(tmp_path, archive_server, monkeypatch):
    from alma_regen.airflow.operators.staging import StageAsdmOperator, StageAuxiliaryOperator
    archive = ab.build_archive(tmp_path / "archive", n_binaries=2, binary_size=100_000)
    srv = archive_server(archive.dir)
    monkeypatch.setenv("AIRFLOW_CONN_ALMA_REQUEST_HANDLER", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": int(srv.url.rsplit(":", 1)[1]), "schema": "http"}))
    # 1e6 s per GB makes the limit follow the bytes; a floor of 1 s stays out of the way.
    monkeypatch.setenv("ALMA_REGEN_STAGE_TIMEOUT_S_PER_GB", "1000000")
    monkeypatch.setenv("ALMA_REGEN_MIN_TIMEOUT_S", "1")
    work = tmp_path / "work"
    aux = StageAuxiliaryOperator(task_id="stage_auxiliary", mous_uid=archive.mous, workdir=str(work))
    aux.pre_execute(context={})
    aux_bytes = sum(archive.path(n).stat().st_size for n, kind in archive.files.items() if kind != "#progenitor")
    step = timeouts.step_timeout(aux_bytes, 1_000_000, 1)
    assert aux.execution_timeout == timedelta(seconds=timeouts.task_bound(step))
    ebs = aux.execute(context={})  # the listing of pre_execute is used, not fetched again
    assert sorted(ebs) == sorted(archive.ebs)
    eb = ebs[0]
    op = StageAsdmOperator(task_id="stage_asdm", mous_uid=archive.mous, eb_uid=eb, workdir=str(work))
    op.pre_execute(context={})
    step = timeouts.step_timeout(archive.path(archive.asdm_name(eb)).stat().st_size, 1_000_000, 1)
    assert op.execution_timeout == timedelta(seconds=timeouts.task_bound(step))
    assert op.execute(context={})["status"] == "staged"


def test_a_hung_casa_is_killed_at_the_limit_the_settings_give(synth_delivery, tmp_path):
    """`alma-regen image` with no --timeout: the delivery's imaging script hangs in real CASA and is
    killed at max(min_timeout_s, raw GB x casa_timeout_s_per_gb) (it used to hang for ever)."""
    src = Path(synth_delivery["member_dir"])
    member = tmp_path / src.name
    shutil.copytree(src, member, symlinks=True)
    script = next((member / "script").glob("*scriptForImaging.py"))
    script.write_text("import time\nprint('imaging...')\ntime.sleep(100000)\n")
    (member / "calibrated").mkdir(exist_ok=True)
    env = dict(os.environ, ALMA_REGEN_MIN_TIMEOUT_S="8", ALMA_REGEN_CASA_TIMEOUT_S_PER_GB="1")
    r = subprocess.run([sys.executable, "-m", "alma_regen.cli", "image", str(member), "--engine", "script",
                        "--no-fidelity"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("alma-regen image: error: ") and "ran past its 8.0 s limit" in last, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
