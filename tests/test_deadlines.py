"""The deadline allowance of a run: set, or derived from the MOUS size (alma_regen.airflow.deadlines)."""
import json
from datetime import timedelta

import pytest

from alma_regen.config import Settings
from alma_regen.airflow.deadlines import _ended_by, _task_of, allowance_for, raw_bytes


def test_set_allowance_wins():
    assert allowance_for(Settings(deadline_seconds=1, deadline_minutes=5), "uid://A001/X1/X2") == timedelta(seconds=1)
    assert allowance_for(Settings(deadline_minutes=5), "uid://A001/X1/X2") == timedelta(minutes=5)


def test_allowance_from_the_mous_size(synth_delivery, archive_server, monkeypatch):
    archive = archive_server(synth_delivery["archive_dir"])
    host, port = archive.url.split("://", 1)[1].rstrip("/").split(":")
    monkeypatch.setenv("AIRFLOW_CONN_ALMA_REQUEST_HANDLER",
                       json.dumps({"conn_type": "http", "host": host, "port": int(port), "schema": "http"}))
    raw = sum(f["size"] for f in synth_delivery["files"] if f["name"].endswith(".asdm.sdm.tar"))
    assert raw > 0
    s = Settings(deadline_base_minutes=60, deadline_minutes_per_gb=1_000_000)
    assert raw_bytes(s, synth_delivery["mous_uid"], "request_handler") == raw
    assert allowance_for(s, synth_delivery["mous_uid"]) == timedelta(minutes=60 + 1_000_000 * raw / 1e9)
    # A MOUS the archive does not list, or no archive at all: the base allowance.
    assert allowance_for(s, "uid://A001/X9999/X999") == timedelta(minutes=60)
    assert allowance_for(s, synth_delivery["mous_uid"], "s3") == timedelta(minutes=60)


def test_unreachable_archive_gives_the_base(monkeypatch):
    from airflow_procs import free_port
    monkeypatch.setenv("AIRFLOW_CONN_ALMA_REQUEST_HANDLER",
                       json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": free_port(), "schema": "http"}))
    s = Settings(deadline_base_minutes=45)
    assert raw_bytes(s, "uid://A001/X1/X2", "request_handler") is None
    assert allowance_for(s, "uid://A001/X1/X2") == timedelta(minutes=45)


@pytest.mark.parametrize("end,deadline,expected", [
    ("2026-01-01T00:00:10+00:00", "2026-01-01T00:00:20+00:00", True),
    ("2026-01-01T00:00:30+00:00", "2026-01-01T00:00:20+00:00", False),
    (None, "2026-01-01T00:00:20+00:00", True),
])
def test_failed_before_deadline(end, deadline, expected):
    assert _ended_by(end, deadline) is expected


def test_task_of_mapped_step():
    assert _task_of("restore_eb_1") == "restore_eb"
    assert _task_of("stage_asdm") == "stage_asdm"
    assert _task_of("lock_mous") == "lock_mous"
