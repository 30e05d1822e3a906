"""Deadline and failure alerts with a real scheduler and triggerer (LocalExecutor, SQLite).

The scenario (fixtures_airflow.alerting_airflow): a run given a 1-second deadline
that goes on to succeed, and a run that fails for good whose (20-second) deadline
passes after it failed. Each must raise exactly one alert through the webhook.
"""
import pytest

from fixtures_airflow import MISSING_MOUS

pytestmark = [pytest.mark.slow, pytest.mark.casa, pytest.mark.timeout(1200)]

STEPS = {"lock_mous", "check_published", "stage_auxiliary", "inspect", "stage_asdm", "check_staged",
         "prepare_calibration",
         "restore_eb", "finish_calibration", "plan_imaging", "image_unit", "finish_imaging", "fidelity",
         "publish", "release_mous"}


def test_late_run_raises_exactly_one_deadline_alert(alerting_airflow):
    af = alerting_airflow
    assert af.late_state == "success", af.cluster.failure_report("alma_regenerate", af.late_run)
    alerts = af.webhook.of(run_id=af.late_run)
    assert len(alerts) == 1, alerts
    alert = alerts[0]
    assert alert["event"] == "deadline_missed"
    assert alert["mous_uid"] == af.mous
    # The step is the task(s) running when the deadline passed, named as the DAG names them.
    steps = {s.rsplit("_", 1)[0] if s.rsplit("_", 1)[-1].isdigit() else s for s in alert["step"].split(",")}
    assert steps and steps <= STEPS, alert
    assert alert["log_url"].startswith(af.cluster.base_url + "/dags/alma_regenerate/runs/")
    assert "/tasks/" in alert["log_url"]


def test_failed_run_raises_exactly_one_failure_alert(alerting_airflow):
    af = alerting_airflow
    assert af.failed_state == "failed"
    alerts = af.webhook.of(run_id=af.failed_run)
    assert len(alerts) == 1, alerts
    alert = alerts[0]
    assert alert["event"] == "run_failed"
    assert alert["mous_uid"] == MISSING_MOUS
    # The step is the task that failed: the first to ask the archive for the MOUS.
    failed = [t for t in af.cluster.task_instances("alma_regenerate", af.failed_run) if t["state"] == "failed"]
    assert [t["task_id"] for t in failed] == [alert["step"]] == ["check_published"], failed
    assert alert["log_url"].startswith("http")
    # Its own deadline passed later and the triggerer ran the callback: silent, as it must be.
    assert af.failed_deadline_callback.get("missed"), af.failed_deadline_callback
    assert af.failed_deadline_callback.get("callback_state") == "success", af.failed_deadline_callback
    # The permanent error (no such MOUS) was not retried.
    assert failed[0]["try_number"] == 1, failed


def test_no_other_alerts(alerting_airflow):
    af = alerting_airflow
    assert len(af.webhook.events) == 2, af.webhook.events
