"""What an operator sees of alma_regenerate (issue 14: the form, inspect, run names,
the deadline's wording, skips that explain themselves, docs, phases).

The first tests read the DAGs and the library as Airflow does; the last one runs a
real Airflow (api-server, scheduler, dag-processor, triggerer; LocalExecutor on
SQLite) and triggers runs through its REST API exactly as the trigger form does.
"""
import json
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from airflow_env import ROOT
from alma_regen import naming
from alma_regen.config import Settings
from alma_regen.delivery import Delivery, format_plan
from archive_builder import EBS, MOUS, aux_members, build_archive


def load_dag(name: str, **env):
    """A DAG file as the dag-processor runs it, with these ALMA_REGEN_* settings."""
    import os
    import runpy
    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        return runpy.run_path(str(ROOT / "dags" / f"{name}.py"))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def form_required(schema: dict) -> bool:
    """Airflow 3.3's trigger form marks a field required when its schema has a type
    that does not admit null (FlexibleForm/isParamRequired.tsx), and then refuses to
    submit while the field is empty (an emptied text field is sent as null)."""
    t = schema.get("type")
    return bool(t) and not (isinstance(t, list) and "null" in t)


# ---------------------------------------------------------------- item 1: the form

def test_the_form_needs_only_the_mous():
    dag = load_dag("alma_regenerate")["dag"]
    # Required text fields (a choice or a number always has its default): the form
    # marks them with an asterisk and will not submit while one is empty.
    required_text = sorted(k for k, p in dag.params.items() if form_required(p.schema)
                           and (p.value is None or (p.schema.get("type") == "string" and "enum" not in p.schema)))
    assert required_text == ["mous_uid"], "only the MOUS may stop the form from being submitted with its defaults"
    # What the form sends for a run with only the MOUS typed: every default, the
    # emptied CASA version as null.
    from airflow.sdk.definitions.param import ParamsDict
    params = ParamsDict(dag.params)
    params.update({"mous_uid": "uid://A001/X1296/X133", "casa_version": None})
    assert params.validate()["casa_version"] is None
    # A null CASA version renders as "" (the README's version), never as "None".
    prep = dag.task_dict["prepare_calibration"]
    assert "params.casa_version or ''" in prep.casa_version


def test_a_bad_mous_is_explained_where_the_operator_types_it():
    p = load_dag("alma_regenerate")["dag"].params.get_param("mous_uid")
    # Airflow's form cannot check a pattern before submitting: the field's help says
    # what a MOUS uid looks like, with an example, and what it is not.
    assert "uid://A001/X1296/X133" in p.description and "uid___A001" in p.description
    assert p.schema["minLength"] == len("uid://A001/X1/X1")


# ---------------------------------------------------------------- item 8: docs, owner, options

@pytest.mark.parametrize("name", ["alma_regenerate", "alma_bulk_reprocess"])
def test_every_option_is_described(name):
    dag = load_dag(name)["dag"]
    for key, p in dag.params.items():
        assert p.description, f"{name}: {key} has no description"
        for value in p.schema.get("enum", []):
            assert value in p.description, f"{name}: option {key}={value} is not described"


@pytest.mark.parametrize("name", ["alma_regenerate", "alma_bulk_reprocess"])
def test_docs_are_for_operators_and_the_owner_is_named(name):
    dag = load_dag(name)["dag"]
    assert {t.owner for t in dag.tasks} == {"alma-regen"}
    assert "parse" not in dag.doc_md and "0.3 s" not in dag.doc_md
    undocumented = [t.task_id for t in dag.tasks if not t.doc_md]
    assert undocumented == [], f"{name}: tasks without a word for the operator: {undocumented}"


def test_skippable_steps_say_when_they_are_skipped():
    dag = load_dag("alma_regenerate")["dag"]
    for task in ("check_published", "restore_eb", "image_unit", "finish_imaging", "publish"):
        assert "skipped" in dag.task_dict[task].doc_md.lower(), task
        assert f"`{task}`" in dag.doc_md or task in dag.doc_md


# ---------------------------------------------------------------- item 9: phases

def test_tasks_grouped_by_phase_left_to_right():
    dag = load_dag("alma_regenerate")["dag"]
    groups = {gid: sorted(t.task_id for t in g.iter_tasks()) for gid, g in dag.task_group.children.items()
              if hasattr(g, "iter_tasks")}
    assert groups == {
        "staging": ["check_staged", "inspect", "stage_asdm", "stage_auxiliary"],
        "calibration": ["finish_calibration", "prepare_calibration", "restore_eb"],
        "imaging": ["fidelity", "finish_imaging", "image_unit", "plan_imaging"],
        "publishing": ["publish"],
    }
    # Task ids are unchanged (no group prefix): logs, alerts and the Reprocessing view use them.
    up = {t: sorted(dag.task_dict[t].upstream_task_ids) for t in
          ("stage_auxiliary", "prepare_calibration", "plan_imaging", "publish")}
    assert up == {"stage_auxiliary": ["check_published"], "prepare_calibration": ["check_staged"],
                  "plan_imaging": ["finish_calibration"], "publish": ["fidelity"]}


# ---------------------------------------------------------------- item 6: the deadline's words

@pytest.mark.parametrize("env,reference,interval_s", [
    ({}, "queue time + 30 min per GB of raw ASDMs", 3600.0),
    ({"ALMA_REGEN_DEADLINE_BASE_MINUTES": 20, "ALMA_REGEN_DEADLINE_MINUTES_PER_GB": 5},
     "queue time + 5 min per GB of raw ASDMs", 1200.0),
    ({"ALMA_REGEN_DEADLINE_MINUTES": 90}, "queue time", 5400.0),
])
def test_deadline_reads_as_its_allowance(env, reference, interval_s):
    """What the UI gets for "Must complete within <interval> of <reference> (<name>)"."""
    from airflow.api_fastapi.core_api.datamodels.ui.deadline import DeadlineAlertResponse
    from airflow.sdk.serde import serialize
    from airflow.serialization.decoders import decode_deadline_reference
    from airflow.serialization.encoders import encode_deadline_reference
    alert = load_dag("alma_regenerate", **env)["DEADLINE"]
    encoded = encode_deadline_reference(alert.reference)
    assert encoded["reference_type"] == reference
    assert "MousSizeDeadline" not in encoded["reference_type"]
    assert DeadlineAlertResponse.coerce_interval_to_seconds(serialize(alert.interval)) == interval_s
    assert alert.name
    # The scheduler gets our reference back, with what it must subtract.
    back = decode_deadline_reference(encoded)
    assert back.inner_ref.counted_s == interval_s


def test_run_note_gives_the_allowance_and_where_it_came_from():
    from alma_regen.airflow.run_notes import run_note
    q = datetime(2026, 11, 24, 16, 0, tzinfo=timezone.utc)
    s = Settings(deadline_base_minutes=60, deadline_minutes_per_gb=30)
    note = run_note("uid://A001/X1296/X133", q, q + timedelta(minutes=72), s)
    assert note == ("uid://A001/X1296/X133 · deadline 17:12 UTC, 1 h 12 min after it was queued "
                    "(60 min + 30 min per GB x 0.40 GB of raw ASDMs)")
    assert "no raw size was known" in run_note("uid://A001/X1/X2", q, q + timedelta(minutes=60), s)
    assert "deadline_seconds = 5" in run_note("uid://A001/X1/X2", q, q + timedelta(seconds=5),
                                              Settings(deadline_seconds=5))
    assert run_note("uid://A001/X1/X2", q, None, s) == "uid://A001/X1/X2 · no deadline alert"


# ---------------------------------------------------------------- item 5: run ids

def test_run_ids_name_the_mous_and_are_valid_airflow_run_ids():
    import re

    from airflow.utils.types import DagRunType
    when = datetime(2026, 11, 24, 16, 9, 1, tzinfo=timezone.utc)
    for prefix in ("", "bulk"):
        rid = naming.run_id("uid://A001/X1296/X133", when, prefix)
        assert rid.endswith("uid___A001_X1296_X133__20261124T160901")
        assert re.match(r"^[A-Za-z0-9_.~:+-]+$", rid)  # Airflow's allowed_run_id_pattern
        assert DagRunType.from_run_id(rid) == DagRunType.MANUAL  # not a reserved prefix
        assert naming.mous_of_run_id(rid) == "uid://A001/X1296/X133"
    assert naming.mous_of_run_id("manual__2026-11-24T16:09:01+00:00") is None


# ---------------------------------------------------------------- item 3: inspect

@pytest.fixture
def unstaged_member(tmp_path) -> Path:
    """A member folder as stage_auxiliary leaves it: scripts, PPR, README; raw/ empty."""
    member = tmp_path / naming.member_dir(MOUS)
    for name, data in aux_members().items():
        (member / name).parent.mkdir(parents=True, exist_ok=True)
        (member / name).write_bytes(data)
    (member / naming.readme_name(MOUS)).write_text("CASA version used for reduction: 6.5.4-9\n")
    return member


def test_inspect_before_staging_describes_what_will_be_staged(unstaged_member):
    plan = Delivery(unstaged_member).plan(staged=False, archive_sizes={EBS[0]: 2_000_000_000,
                                                                       EBS[1]: 500_000_000})
    text = format_plan(plan)
    assert plan["ok"] and plan["problems"] == []
    assert "ERROR" not in text and "NOT READY" not in text
    assert [e["state"] for e in plan["raw"]["ebs"]] == ["to_stage", "to_stage"]
    assert "2.00 GB in the archive" in text and "500.0 MB in the archive" in text
    assert plan["disk"]["raw_bytes"] == 2_500_000_000 and plan["disk"]["estimated"]
    # scriptForPI's disk check, before the data are staged: (11 + 3f) x raw/, f = 0 here
    assert "needs 27.50 GB (11 + 3 x 0 = 11 x raw/" in text
    assert text.endswith("READY TO STAGE: 2 ASDM(s) to fetch")
    # Without the archive's sizes it says when the disk will be known, not "0.00 GB".
    text = format_plan(Delivery(unstaged_member).plan(staged=False))
    assert "0.00" not in text and "known once staged" in text


def test_after_staging_a_missing_asdm_is_an_error(unstaged_member):
    plan = Delivery(unstaged_member).plan()
    assert not plan["ok"]
    assert format_plan(plan).endswith("NOT READY: fix the errors above")


# ---------------------------------------------------------------- item 8: the manifest's words

def test_manifest_does_not_claim_a_request_nobody_made(unstaged_member):
    from alma_regen.products.publish import _engines
    script = unstaged_member / "script" / f"member.{naming.uid_to_file(MOUS)}.scriptForImaging.py"
    script.write_text("tclean(vis='a.ms', imagename='x')\n")
    ran = {"engine": "script", "reason": "engine script requested", "casa": None, "casa_choice": None}
    auto = _engines(unstaged_member, dict(ran), {"imaging": "auto", "calibration": "auto"})["imaging"]
    assert auto["requested"] == "auto"
    assert "requested" not in auto["reason"] and auto["reason"].startswith("auto: ")
    asked = _engines(unstaged_member, dict(ran), {"imaging": "script"})["imaging"]
    assert asked["reason"] == "engine script requested" and asked["requested"] == "script"


# ---------------------------------------------------------------- a real Airflow

# Registers the run-note listener as the plugin will (alma_regen.airflow.run_notes) for this
# Airflow only, until the plugin lists it itself (then it is registered once: Airflow's
# listener manager skips a module it already has).
NOTES_PLUGIN = """
from airflow.plugins_manager import AirflowPlugin
from alma_regen.airflow import run_notes

class AlmaRegenRunNotes(AirflowPlugin):
    name = "alma_regen_run_notes_test"
    listeners = [run_notes]
"""


@pytest.fixture(scope="module")
def operator_airflow(tmp_path_factory):
    from airflow_procs import AirflowCluster
    from alma_regen_dev.serve_archive import ArchiveServer
    root = tmp_path_factory.mktemp("operator_view")
    build_archive(root / "archive")
    archive = ArchiveServer(root / "archive", "127.0.0.1", 0)
    threading.Thread(target=archive.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    host, port = archive.url.split("://", 1)[1].rstrip("/").split(":")
    env = {"ALMA_REGEN_WORKDIR": root / "work", "ALMA_REGEN_RETRY_DELAY_S": 1, "ALMA_REGEN_MAX_RETRY_DELAY_S": 2,
           "ALMA_REGEN_RETRIES": 0, "AIRFLOW__CORE__PARALLELISM": 4,
           "AIRFLOW_CONN_ALMA_REQUEST_HANDLER": json.dumps(
               {"conn_type": "http", "host": host, "port": int(port), "schema": "http"})}
    cluster = AirflowCluster(root / "airflow", executor="LocalExecutor", env=env)
    (cluster.home / "plugins" / "alma_regen_run_notes_test.py").write_text(NOTES_PLUGIN)
    try:
        cluster.migrate()
        cluster.start_all()
        cluster.wait_ready()
        for name in ("casa", "alma_staging"):
            cluster.api("POST", "/pools", {"name": name, "slots": 2, "description": "alma-regen test"})
        cluster.api("POST", "/variables", {"key": "alma_regen", "value": json.dumps({"deadline_seconds": 900})})
        cluster.wait_dag("alma_regenerate")
        yield cluster
    finally:
        cluster.stop()
        archive.shutdown()
        archive.server_close()


def wait_task(af, run_id, task_id, timeout=300) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        af.check_alive()
        try:
            states = {t["task_id"]: t["state"] for t in af.task_instances("alma_regenerate", run_id)
                      if t["map_index"] in (-1, None)}
        except OSError:  # an api-server slow to answer on a busy machine: ask again
            continue
        if states.get(task_id) in ("success", "failed", "skipped", "upstream_failed"):
            return states[task_id]
        time.sleep(2)
    raise TimeoutError(f"{task_id} of {run_id} did not finish:\n{af.failure_report('alma_regenerate', run_id)}")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_run_from_the_form_is_named_inspected_and_noted(operator_airflow):
    af = operator_airflow
    # Exactly what the trigger form posts when only the MOUS is typed: every default,
    # the emptied CASA version as null, the optional run id and note left out.
    form = {"mous_uid": MOUS, "source": "request_handler", "calibration": "auto", "imaging": "none",
            "casa_version": None, "dosplit": False, "spacesaving": 1, "docontsub": False,
            "publish": False, "force": False}
    rid = naming.run_id(MOUS, datetime.now(timezone.utc))
    run = af.api("POST", "/dags/alma_regenerate/dagRuns", {"logical_date": None, "conf": form, "dag_run_id": rid})
    assert run["dag_run_id"] == rid
    assert wait_task(af, rid, "check_staged") == "success", af.failure_report("alma_regenerate", rid)

    log = af.task_log("alma_regenerate", rid, "inspect")
    assert "READY TO STAGE: 2 ASDM(s) to fetch" in log, log[-3000:]
    assert "in the archive" in log
    assert "ERROR" not in log and "NOT READY" not in log and "raw 0 kB" not in log, log[-3000:]
    staged = af.task_log("alma_regenerate", rid, "check_staged")
    assert "staged; the plan as it now stands" in staged and "\nOK" in staged, staged[-3000:]
    checked = af.task_log("alma_regenerate", rid, "check_published")
    assert "nothing is published to compare with" in checked, checked[-2000:]

    # The run's note: the MOUS and its deadline in words (15 min from the settings).
    note = af.api("GET", f"/dags/alma_regenerate/dagRuns/{rid}")["note"]
    assert note.startswith(f"{MOUS} · deadline ") and "15 min after it was queued" in note, note
    assert "deadline_seconds = 900 in the settings" in note, note

    # The DAG's deadline as the UI words it: "Must complete within <interval> of <reference> (<name>)".
    status, body = af.get("/ui/dags/alma_regenerate/deadlineAlerts")
    assert status == 200, body
    alert = json.loads(body)["deadline_alerts"][0]
    assert alert["reference_type"] == "queue time + 30 min per GB of raw ASDMs", alert
    assert alert["interval"] == 3600.0 and alert["name"], alert
    # And the run's deadline is its allowance after it was queued, whatever the DAG's interval.
    status, body = af.get(f"/ui/dags/alma_regenerate/dagRuns/{rid}/deadlines")
    dl = json.loads(body)["deadlines"][0]
    queued = af.api("GET", f"/dags/alma_regenerate/dagRuns/{rid}")["queued_at"]
    gap = datetime.fromisoformat(dl["deadline_time"].replace("Z", "+00:00")) - \
        datetime.fromisoformat(queued.replace("Z", "+00:00"))
    assert abs(gap.total_seconds() - 900) < 1, (dl, queued)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_callers_note_is_kept(operator_airflow):
    """A note given at trigger time (the form's Note field, the REST API) is the caller's:
    the listener leaves it, and the REST API can still write it."""
    af = operator_airflow
    run = af.api("POST", "/dags/alma_regenerate/dagRuns",
                 {"logical_date": None, "note": "rerun for the PI", "conf": {
                     "mous_uid": MOUS, "imaging": "none", "publish": False}})
    assert run["dag_run_id"].startswith("manual__")
    end = time.monotonic() + 300  # the listener runs when the scheduler starts the run
    while af.run_state("alma_regenerate", run["dag_run_id"]) == "queued" and time.monotonic() < end:
        time.sleep(1)
    time.sleep(3)
    assert af.api("GET", f"/dags/alma_regenerate/dagRuns/{run['dag_run_id']}")["note"] == "rerun for the PI"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
