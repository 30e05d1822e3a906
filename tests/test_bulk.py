"""alma_bulk_reprocess: a worklist in, a bounded number of alma_regenerate runs out."""
import json
import sqlite3
import subprocess
import sys


import pytest

from airflow_env import connection_env, make_airflow_home
from alma_regen import naming
from alma_regen.bulk import decide, parse_worklist
from alma_regen.errors import PermanentError
from alma_regen.reuse import current_casa
from archive_builder import build_archive

MOUSS = [f"uid://A001/X2{n}00/X{n}a" for n in range(1, 6)]


def ebs_of(n):
    return (f"uid://A002/Xc{n}000/X1", f"uid://A002/Xc{n}000/X2")


def publish_stub(client, bucket, mous, files, casa):
    """A published run as publish() leaves it (manifest, then latest.json): the
    publishing itself is tested in test_publish; here only its result matters."""
    mous_f = naming.uid_to_file(mous)
    manifest = {"mous_uid": mous, "run": "earlier", "inputs": [{"file": n, "size": s} for n, s in files.items()],
                "engines": {"calibration": {"engine": "native", "casa": casa}}}
    key = f"regen/{mous_f}/earlier/manifest.json"
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest).encode())
    client.put_object(Bucket=bucket, Key=f"regen/{mous_f}/latest.json",
                      Body=json.dumps({"manifest": f"s3://{bucket}/{key}"}).encode())


def test_bulk_run_starts_exactly_the_unpublished(tmp_path, archive_server, seaweedfs):
    archive = tmp_path / "archive"
    for n, mous in enumerate(MOUSS, 1):
        build_archive(archive, mous=mous, ebs=ebs_of(n), n_binaries=1, binary_size=1024)
    server = archive_server(archive)
    bucket = seaweedfs.bucket("products")
    client = seaweedfs.client()
    for mous in MOUSS[:2]:
        files = {p.name: p.stat().st_size for p in archive.iterdir()
                 if naming.uid_to_file(mous) in p.name or any(naming.uid_to_file(e) in p.name
                                                              for e in ebs_of(MOUSS.index(mous) + 1))}
        publish_stub(client, bucket, mous, files, current_casa())
    worklist = tmp_path / "worklist.txt"
    worklist.write_text("# the week's reprocessing\n" + "\n".join(MOUSS) + "\n" + MOUSS[0] + "\n")
    home = make_airflow_home(tmp_path / "airflow", ALMA_REGEN_RETRY_DELAY_S=1, ALMA_REGEN_MAX_RETRY_DELAY_S=2)
    env = connection_env(server.url, seaweedfs)
    env.update(ALMA_REGEN_WORKDIR=str(tmp_path / "work"), ALMA_REGEN_PRODUCTS_URL=f"s3://{bucket}/regen",
               ALMA_REGEN_BULK_WORKLIST=str(worklist), ALMA_REGEN_BULK_MIN_FREE_GB="0")
    r = home.dags_test("alma_bulk_reprocess", {}, env=env)
    (tmp_path / "dags_test.log").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, f"see {tmp_path / 'dags_test.log'}"
    with sqlite3.connect(home.home / "airflow.db") as db:
        rows = db.execute("SELECT run_id, conf FROM dag_run WHERE dag_id = 'alma_regenerate'").fetchall()
    started = sorted(json.loads(conf)["mous_uid"] for _, conf in rows)
    assert started == sorted(MOUSS[2:]), rows
    assert all(json.loads(conf)["bulk"] is True for _, conf in rows)
    assert all(run_id.startswith("bulk__uid___A001_") for run_id, _ in rows)
    # The Reprocessing view's campaign panel, read from this Airflow's database by the view's
    # own query: the whole worklist (the duplicate once), two done as published, three
    # started and not yet run (`dags test` runs only the bulk DAG), nothing finished: no ETA.
    r = subprocess.run([sys.executable, "-c", CAMPAIGN], env=home.env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    c = json.loads(r.stdout.strip().splitlines()[-1])
    assert (c["total"], c["done"], c["running"], c["waiting"], c["failed"]) == (5, 2, 3, 0, 0), c
    assert c["bulk_runs"] == 1 and c["eta_s"] is None and c["throughput_per_h"] is None


CAMPAIGN = """
import json
from airflow.utils.session import create_session
from alma_regen.ui_app import campaign_of
with create_session() as session:
    print(json.dumps(campaign_of(session)))
"""


def test_worklist_forms_and_bad_entries():
    assert [e["mous_uid"] for e in parse_worklist("uid://A001/X1/X2\n# c\n\nuid://A001/X1/X3 # x\n", "w")] == \
        ["uid://A001/X1/X2", "uid://A001/X1/X3"]
    j = parse_worklist('[{"mous_uid": "uid://A001/X1/X2", "force": true}, "uid://A001/X1/X3"]', "w")
    assert j == [{"mous_uid": "uid://A001/X1/X2", "force": True}, {"mous_uid": "uid://A001/X1/X3", "force": False}]
    with pytest.raises(PermanentError, match="entry 2 is not a MOUS uid"):
        parse_worklist("uid://A001/X1/X2\nrm -rf /\n", "w")
    with pytest.raises(PermanentError, match="not valid JSON"):
        parse_worklist("[1, 2", "w")


def test_decide_bounds_runs_and_gates_on_disk(tmp_path):
    entries = [{"mous_uid": m, "force": False} for m in MOUSS]
    kw = dict(list_files=lambda m: {"a": 1}, manifest_of=lambda m: None, casa_version="6.7.0-31",
              force_all=False, workdir=tmp_path)
    d = decide(entries, max_runs=2, min_free_gb=0, **kw)
    assert [e["mous_uid"] for e in d["start"]] == MOUSS[:2] and len(d["deferred"]) == 3
    d = decide(entries, max_runs=10, min_free_gb=1e9, **kw)  # a disk that is never big enough
    assert d["start"] == [] and len(d["deferred"]) == 5 and "GB free" in d["deferred"][0]["why"]
    published = {"run": "r1", "inputs": [{"file": "a", "size": 1}], "engines": {"calibration": {"casa": "6.7.0-31"}}}
    d = decide(entries, max_runs=10, min_free_gb=0, **{**kw, "manifest_of": lambda m: published})
    assert d["start"] == [] and len(d["skipped"]) == 5
    d = decide(entries, max_runs=10, min_free_gb=0, **{**kw, "manifest_of": lambda m: published, "force_all": True})
    assert len(d["start"]) == 5
    newer = dict(published, engines={"calibration": {"casa": "6.6.1-17"}})
    d = decide(entries, max_runs=10, min_free_gb=0, **{**kw, "manifest_of": lambda m: newer})
    assert len(d["start"]) == 5 and "now CASA 6.7.0-31" in d["start"][0]["why"]


def test_operator_runs_go_before_bulk_runs():
    """The weight rule alone, on stand-ins for a task instance (the scheduler's
    use of it is checked in test_dags: an operator's run weighs >= 1000)."""
    from types import SimpleNamespace
    from alma_regen.priority import OPERATOR_BONUS, OperatorRunsFirst

    task = SimpleNamespace(priority_weight=1, get_dag=lambda: None)
    bulk = SimpleNamespace(task=task, dag_run=SimpleNamespace(conf={"bulk": True}), map_index=-1)
    operator = SimpleNamespace(task=task, dag_run=SimpleNamespace(conf={}), map_index=-1)
    rule = OperatorRunsFirst()
    assert rule.get_weight(operator) == rule.get_weight(bulk) + OPERATOR_BONUS
