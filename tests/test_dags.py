"""The DAGs with real Airflow: parse cost, params, and whole runs (`airflow dags test`)
against the real request handler (serve-archive) and S3 (SeaweedFS)."""
import json
import shutil
import subprocess
import sys


import pytest

from airflow_env import ROOT, connection_env, make_airflow_home
from alma_regen import naming

DAG_FILES = sorted((ROOT / "dags").glob("*.py"))

PARSE = r"""
import runpy, sys, time
# What Airflow's DAG processor has loaded before it runs a DAG file (the ORM models
# included): the parse timeout sees only the file's own cost on top of that.
import airflow.dag_processing.processor
t = time.perf_counter()
runpy.run_path(sys.argv[1])
dt = time.perf_counter() - t
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("casatools", "casatasks", "casashell", "boto3", "lxml"))
print(dt, ",".join(heavy))
"""


@pytest.mark.parametrize("path", DAG_FILES, ids=[p.name for p in DAG_FILES])
def test_dag_file_parses_fast_without_heavy_imports(path):
    r = subprocess.run([sys.executable, "-c", PARSE, str(path)], capture_output=True, text=True, check=True,
                       env={"AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PATH": "/usr/bin:/bin"})
    seconds, heavy = r.stdout.split()[0], r.stdout.split()[1:] or [""]
    assert heavy == [""], f"{path.name} imports {heavy[0]} at parse time"
    # Import cost of the file itself (our operators, params, providers' operators not yet loaded).
    assert float(seconds) < 0.3, f"{path.name} took {float(seconds):.3f} s to import"


def regenerate_dag():
    sys.path.insert(0, str(ROOT / "dags"))
    try:
        import alma_regenerate
        return alma_regenerate.dag
    finally:
        sys.path.pop(0)


@pytest.mark.parametrize("worklist,schedule", [("", "None"), ("/data/worklist.txt", "*/15 * * * *")])
def test_the_bulk_feeder_is_scheduled_only_with_a_worklist(worklist, schedule):
    # Without a worklist every pass would fail, every 15 minutes.
    code = ("import runpy, sys; d = runpy.run_path(sys.argv[1])['dag']; "
            "print(getattr(d.timetable, 'expression', None))")
    env = {"AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PATH": "/usr/bin:/bin", "ALMA_REGEN_BULK_WORKLIST": worklist}
    r = subprocess.run([sys.executable, "-c", code, str(ROOT / "dags" / "alma_bulk_reprocess.py")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == schedule


@pytest.mark.parametrize("conf,why", [
    ({}, "mous_uid"),
    ({"mous_uid": "uid://A003/X1/X2"}, "does not match"),  # MOUSs live in A001 (A002: early cycles)
    ({"mous_uid": "uid://A001/X1/X2\n"}, "does not match"),
    ({"mous_uid": "uid___A001_X1_X2"}, "does not match"),
    ({"mous_uid": "uid://A001/X1/X2", "calibration": "guess"}, "is not one of"),
    ({"mous_uid": "uid://A001/X1/X2", "imaging": "fast"}, "is not one of"),
    ({"mous_uid": "uid://A001/X1/X2", "spacesaving": 7}, "maximum"),
    ({"mous_uid": "uid://A001/X1/X2", "casa_version": "latest"}, "does not match"),
    ({"mous_uid": "uid://A001/X1/X2", "publish": "yes"}, "boolean"),
])
def test_invalid_params_are_refused_at_trigger_time(conf, why):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError
    params = ParamsDict(regenerate_dag().params)
    with pytest.raises(ParamValidationError, match=why):
        params.update(conf)  # what the trigger form and the REST API do with the conf
        params.validate()


def test_valid_params_pass():
    from airflow.sdk.definitions.param import ParamsDict
    params = ParamsDict(regenerate_dag().params)
    params.update({"mous_uid": "uid://A001/X1296/X133", "casa_version": "6.5.4-9", "spacesaving": 2})
    assert params.validate()["calibration"] == "auto"


@pytest.mark.parametrize("value,default,expected", [
    (True, False, True), (False, True, False), ("True", False, True), ("False", True, False),
    (" on ", False, True), ("0", True, False),
    ("", False, False), ("", True, True), ("None", True, True),  # neither: the operator's default
])
def test_rendered_boolean_params(value, default, expected):
    """One reading of a rendered boolean param for every operator: force and require_all_ebs are
    off unless said on, publish is on unless said off."""
    from alma_regen.airflow.operators.mous import truthy
    assert truthy(value, default=default) is expected


# ---------------------------------------------------------------- whole runs

@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    return make_airflow_home(tmp_path_factory.mktemp("airflow"),
                             ALMA_REGEN_RETRY_DELAY_S=1, ALMA_REGEN_MAX_RETRY_DELAY_S=2)


def run_env(tmp_path, archive, s3=None, bucket=None, **extra):
    env = connection_env(archive.url, s3)
    env["ALMA_REGEN_WORKDIR"] = str(tmp_path / "work")
    if bucket:
        env["ALMA_REGEN_PRODUCTS_URL"] = f"s3://{bucket}/regen"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def states(airflow_home, run_id):
    return airflow_home.task_states("alma_regenerate", run_id)


def datalinks(archive) -> int:
    """The DataLink answers (listings of the MOUS) serve-archive gave so far."""
    return sum(1 for h in archive.stats()["headers"] if h[0].startswith("/datalink/sync"))


@pytest.mark.casa
def test_dags_test_regenerates_and_publishes(airflow_home, synth_delivery, archive_server, seaweedfs, tmp_path):
    archive = archive_server(synth_delivery["archive_dir"])
    bucket = seaweedfs.bucket("products")
    # keep=nothing: once published and verified, the working space goes (workspace.py).
    r = airflow_home.dags_test("alma_regenerate", {"mous_uid": synth_delivery["mous_uid"], "keep": "nothing"},
                               env=run_env(tmp_path, archive, seaweedfs, bucket))
    listings = datalinks(archive)
    (tmp_path / "dags_test.log").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, f"see {tmp_path / 'dags_test.log'}: " + (r.stdout + r.stderr)[-2000:]
    # inspect runs before the raw data are staged: it says what will be staged, and a
    # successful run logs no error for the ASDMs not yet there (issue 14).
    out = r.stdout + r.stderr
    assert "READY TO STAGE: 2 ASDM(s) to fetch" in out, f"see {tmp_path / 'dags_test.log'}"
    assert "NOT READY" not in out and "raw/ does not hold its ASDM" not in out
    run_id = airflow_home.last_run_id("alma_regenerate")
    st = states(airflow_home, run_id)
    # This delivery was imaged by a script: nothing to map per target/spw.
    assert st.pop(("image_unit", -1))["state"] == "skipped"
    assert all(t["state"] == "success" for t in st.values()), st
    assert len([k for k in st if k[0] == "restore_eb"]) == 2  # mapped per EB
    import sqlite3
    with sqlite3.connect(airflow_home.home / "airflow.db") as db:
        weights = [w for (w,) in db.execute("SELECT priority_weight FROM task_instance WHERE run_id = ?", (run_id,))]
    assert weights and min(weights) >= 1000, "an operator's run goes before bulk work"
    assert len([k for k in st if k[0] == "stage_asdm"]) == 2
    client = seaweedfs.client()
    mous_f = naming.uid_to_file(synth_delivery["mous_uid"])
    latest = json.loads(client.get_object(Bucket=bucket, Key=f"regen/{mous_f}/latest.json")["Body"].read())
    manifest = json.loads(client.get_object(Bucket=bucket, Key=latest["manifest"].split(bucket + "/", 1)[1])["Body"].read())
    assert manifest["mous_uid"] == synth_delivery["mous_uid"]
    assert manifest["fidelity"]["ok"] is True
    assert manifest["engines"]["calibration"]["engine"] == "native"
    assert {i["file"] for i in manifest["inputs"]} == {f["name"] for f in synth_delivery["files"]}
    # Cleaned after the verified publish, and not brought back by a later step's note.
    assert not (tmp_path / "work" / f"member.{mous_f}").exists(), "keep=nothing leaves no member folder"
    assert "working space cleaned (keep=nothing): removed the whole member folder" in out, \
        f"see {tmp_path / 'dags_test.log'}"
    assert not (tmp_path / "work" / ".locks" / f"{mous_f}.json").exists(), "the teardown releases the lock"
    # The archive's listing: asked once for the whole run (lock_mous's reservation, then read by the
    # reuse check, stage_auxiliary, inspect and each stage_asdm; staging/run_listing.py), and gone
    # with the run's teardown.
    assert listings == 1, f"{listings} DataLink requests in one run; see {tmp_path / 'dags_test.log'}"
    assert not (tmp_path / "work" / ".run-listings" / f"{mous_f}.json").exists()
    # Cleaned, the run's disk reservation comes down to what is left (nothing) before its teardown.
    assert "disk reservation now 0.00 GB" in out, f"see {tmp_path / 'dags_test.log'}"
    from alma_regen import attempts
    rec = attempts.records(tmp_path / "work")[synth_delivery["mous_uid"]]
    assert rec["failures"] == 0 and rec["runs"][-1]["outcome"] == "success" and rec["runs"][-1]["run_id"] == run_id

    # The same MOUS again, not forced: already published with the same inputs and CASA.
    r = airflow_home.dags_test("alma_regenerate", {"mous_uid": synth_delivery["mous_uid"]},
                               env=run_env(tmp_path, archive, seaweedfs, bucket))
    again = states(airflow_home, airflow_home.last_run_id("alma_regenerate"))
    assert again[("check_published", -1)]["state"] == "skipped"
    assert datalinks(archive) == listings + 1, "a later run asks the archive again"
    # The skip says why, and how to redo it anyway.
    assert "every later step is skipped; trigger again with force=true" in r.stdout + r.stderr
    assert again[("stage_auxiliary", -1)]["state"] == "skipped"
    assert again[("release_mous", -1)]["state"] == "success"


def test_transient_fault_is_retried_and_succeeds(airflow_home, synth_delivery, archive_server, tmp_path):
    archive = archive_server(synth_delivery["archive_dir"])
    # More 503s than the stager's own in-process tries: the task fails once, transiently.
    archive.faults(fail_first=8)
    r = airflow_home.dags_test("alma_regenerate", {"mous_uid": synth_delivery["mous_uid"], "imaging": "none",
                                                   "publish": False},
                               env=run_env(tmp_path, archive))
    st = states(airflow_home, airflow_home.last_run_id("alma_regenerate"))
    first = st[("stage_auxiliary", -1)]
    assert first["state"] == "success" and first["try_number"] >= 2, st
    # The run's listing: asked by lock_mous, then again by each retry of stage_auxiliary (a failure
    # may come from what the listing said), and read by inspect and each stage_asdm.
    assert datalinks(archive) == first["try_number"], (r.stdout + r.stderr)[-3000:]
    assert st[("finish_calibration", -1)]["state"] == "success", (r.stdout + r.stderr)[-3000:]
    # The try that failed is not a failed run: the MOUS's attempts record a success.
    from alma_regen import attempts
    rec = attempts.records(tmp_path / "work")[synth_delivery["mous_uid"]]
    assert rec["failures"] == 0 and [r["outcome"] for r in rec["runs"]] == ["success"], rec


def test_permanent_fault_fails_without_retries(airflow_home, synth_delivery, archive_server, tmp_path):
    broken = tmp_path / "archive"
    shutil.copytree(synth_delivery["archive_dir"], broken)
    aux = next(broken.glob("*_auxiliary.tar"))
    aux.write_bytes(aux.read_bytes()[: 20 * 512])  # a cut tar: refused, never retried
    archive = archive_server(broken)
    r = airflow_home.dags_test("alma_regenerate", {"mous_uid": synth_delivery["mous_uid"], "imaging": "none",
                                                   "publish": False},
                               env=run_env(tmp_path, archive))
    st = states(airflow_home, airflow_home.last_run_id("alma_regenerate"))
    aux_ti = st[("stage_auxiliary", -1)]
    assert aux_ti["state"] == "failed" and aux_ti["try_number"] == 1, st
    assert st[("release_mous", -1)]["state"] == "success"
    assert "permanent" in (r.stdout + r.stderr).lower()
    # The teardown recorded a failed run, with the task and its error as the reason.
    from alma_regen import attempts
    rec = attempts.records(tmp_path / "work")[synth_delivery["mous_uid"]]
    assert rec["failures"] == 1 and rec["runs"][-1]["outcome"] == "failed", rec
    assert rec["runs"][-1]["error"].startswith("stage_auxiliary: "), rec
