"""alma_bulk_reprocess: a worklist in, a bounded number of alma_regenerate runs out."""
import json
import sqlite3
import subprocess
import sys
import time

import pytest

from airflow_env import connection_env, make_airflow_home
from alma_regen import naming
from alma_regen.bulk import decide, parse_worklist
from alma_regen.errors import PermanentError
from alma_regen.products.reuse import current_casa
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
                      Body=json.dumps({"mous_uid": mous, "run": "earlier",
                                       "manifest": f"s3://{bucket}/{key}"}).encode())


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
    # Each run started holds its disk reservation in the ledger, under the id it was triggered as
    # (`dags test` runs none of them: nothing released them yet).
    held = json.loads((tmp_path / "work" / ".ledger.json").read_text())["runs"]
    assert {r: e["mous_uid"] for r, e in held.items()} == {r: json.loads(c)["mous_uid"] for r, c in rows}
    # The Reprocessing view's campaign panel, read from this Airflow's database by the view's
    # own query: the whole worklist (the duplicate once), two done as published, three
    # started and not yet run (`dags test` runs only the bulk DAG), nothing finished: no ETA.
    r = subprocess.run([sys.executable, "-c", CAMPAIGN], env=home.env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    c = json.loads(r.stdout.strip().splitlines()[-1])
    assert (c["total"], c["done"], c["running"], c["waiting"], c["failed"]) == (5, 2, 3, 0, 0), c
    assert c["bulk_runs"] == 1 and c["eta_s"] is None and c["throughput_per_h"] is None
    # The next feeder pass: the three runs are queued (Airflow says so through the Task SDK),
    # so their reservations stay and their MOUSs are in flight: nothing is started twice. A
    # reservation of a run Airflow never had (a trigger that failed an hour ago) is forgotten.
    ledger = tmp_path / "work" / ".ledger.json"
    doc = json.loads(ledger.read_text())
    doc["runs"]["bulk__gone"] = {"mous_uid": MOUSS[2], "bytes": 10**12, "since": time.time() - 3600}
    ledger.write_text(json.dumps(doc))
    r = home.dags_test("alma_bulk_reprocess", {}, env=env)
    (tmp_path / "dags_test_2.log").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, f"see {tmp_path / 'dags_test_2.log'}"
    with sqlite3.connect(home.home / "airflow.db") as db:
        assert db.execute("SELECT count(*) FROM dag_run WHERE dag_id = 'alma_regenerate'").fetchone()[0] == 3
    assert json.loads(ledger.read_text())["runs"] == held
    assert "forgot the reservation of bulk__gone" in r.stdout + r.stderr
    assert r.stdout.count("in flight: run bulk__") + r.stderr.count("in flight: run bulk__") >= 3


CAMPAIGN = """
import json
from airflow.utils.session import create_session
from alma_regen.airflow.ui_app import campaign_of
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


ASDM = "2019.1.00001.S_uid___A002_Xc1000_X1.asdm.sdm.tar"
GB = 10**9


def test_decide_skips_the_published_and_admits_the_rest_by_reservation(tmp_path):
    entries = [{"mous_uid": m, "force": False} for m in MOUSS]
    # Every MOUS: one 1 GB ASDM and a 1 MB auxiliary tar: a footprint of 11 x 1 GB + 1 MB.
    files = {ASDM: GB, "aux.tar": 10**6}
    kw = dict(list_files=lambda m: files, manifest_of=lambda m: None, casa_version="6.7.0-31",
              force_all=False, workdir=tmp_path, ledger={}, footprint_factor=11)
    need = 11 * GB + 10**6
    # A budget for three of them and a cap of four: the first three start, the other two wait on the budget.
    d = decide(entries, budget_bytes=3 * need, max_in_flight=4, **kw)
    assert [e["mous_uid"] for e in d["start"]] == MOUSS[:3] and [e["bytes"] for e in d["start"]] == [need] * 3
    assert [e["mous_uid"] for e in d["deferred"]] == MOUSS[3:] and "budget" in d["deferred"][0]["why"]
    assert d["too_large"] == [] and d["skipped"] == []
    # The cap, not the budget, holds them back: two start.
    d = decide(entries, budget_bytes=100 * need, max_in_flight=2, **kw)
    assert [e["mous_uid"] for e in d["start"]] == MOUSS[:2]
    assert [e["why"] for e in d["deferred"]] == ["2 runs in flight, the cap is 2"] * 3
    # A budget smaller than one MOUS: every one is too large, reported, none started or deferred.
    d = decide(entries, budget_bytes=5 * GB, max_in_flight=4, **kw)
    assert d["start"] == [] and d["deferred"] == [] and len(d["too_large"]) == 5
    assert d["too_large"][0]["why"] == "needs 11.0 GB, the budget is 5.0 GB"
    # Runs in flight count: one holds 2 x need and one slot (of MOUSS[0]: deferred as in
    # flight, not started twice); of a budget of 3 x need one more fits.
    ledger = {"bulk__a": {"mous_uid": MOUSS[0], "bytes": 2 * need, "since": 0}}
    d = decide(entries, budget_bytes=3 * need, max_in_flight=4, **{**kw, "ledger": ledger})
    assert [e["mous_uid"] for e in d["start"]] == [MOUSS[1]]
    assert d["deferred"][0] == {"mous_uid": MOUSS[0], "why": "in flight: run bulk__a"}
    assert [e["mous_uid"] for e in d["deferred"][1:]] == MOUSS[2:] and d["in_flight"] == 1
    # The skip logic is as before: published with the same inputs and CASA -> skipped,
    # unless forced; a newer CASA -> started again.
    published = {"run": "r1", "inputs": [{"file": n, "size": s} for n, s in files.items()],
                 "engines": {"calibration": {"casa": "6.7.0-31"}}}
    d = decide(entries, budget_bytes=100 * need, max_in_flight=10, **{**kw, "manifest_of": lambda m: published})
    assert d["start"] == [] and len(d["skipped"]) == 5
    d = decide(entries, budget_bytes=100 * need, max_in_flight=10,
               **{**kw, "manifest_of": lambda m: published, "force_all": True})
    assert len(d["start"]) == 5 and d["start"][0]["why"] == "forced"
    newer = dict(published, engines={"calibration": {"casa": "6.6.1-17"}})
    d = decide(entries, budget_bytes=100 * need, max_in_flight=10, **{**kw, "manifest_of": lambda m: newer})
    assert len(d["start"]) == 5 and "now CASA 6.7.0-31" in d["start"][0]["why"]


def test_operator_runs_go_before_bulk_runs():
    """The weight rule alone, on stand-ins for a task instance (the scheduler's
    use of it is checked in test_dags: an operator's run weighs >= 1000)."""
    from types import SimpleNamespace
    from alma_regen.airflow.priority import OPERATOR_BONUS, OperatorRunsFirst

    task = SimpleNamespace(priority_weight=1, get_dag=lambda: None)
    bulk = SimpleNamespace(task=task, dag_run=SimpleNamespace(conf={"bulk": True}), map_index=-1)
    operator = SimpleNamespace(task=task, dag_run=SimpleNamespace(conf={}), map_index=-1)
    rule = OperatorRunsFirst()
    assert rule.get_weight(operator) == rule.get_weight(bulk) + OPERATOR_BONUS


def test_an_operators_run_reserves_at_lock_and_releases_at_teardown(tmp_path, archive_server, monkeypatch):
    """A run not started by the feeder (an operator's rerun) is not held back, but it counts:
    lock_mous reserves its footprint from the archive's listing, release_mous drops it. The
    operators run on a stand-in for the task context (the dag_run and params they read)."""
    from types import SimpleNamespace
    from alma_regen import admission
    from alma_regen.airflow.operators.lock import LockMousOperator, ReleaseMousOperator
    archive = tmp_path / "archive"
    build_archive(archive, mous=MOUSS[0], ebs=ebs_of(1), n_binaries=1, binary_size=1024)
    server = archive_server(archive)
    for k, v in connection_env(server.url).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("ALMA_REGEN_FOOTPRINT_FACTOR", "7")
    work = tmp_path / "work"
    files = {p.name: p.stat().st_size for p in archive.iterdir() if p.is_file()}
    asdm = sum(s for n, s in files.items() if n.endswith(".asdm.sdm.tar"))
    assert asdm > 0
    ctx = {"dag_run": SimpleNamespace(dag_id="alma_regenerate", run_id="manual__rerun"),
           "params": {"source": "request_handler"}}
    lock = LockMousOperator(task_id="lock_mous", mous_uid=MOUSS[0], workdir=str(work))
    lock.execute(ctx)
    held = admission.entries(work)
    assert list(held) == ["manual__rerun"] and held["manual__rerun"]["mous_uid"] == MOUSS[0]
    assert held["manual__rerun"]["bytes"] == 7 * asdm + sum(files.values()) - asdm
    lock.execute(ctx)  # a retried lock keeps the one reservation
    assert list(admission.entries(work)) == ["manual__rerun"]
    release = ReleaseMousOperator(task_id="release_mous", mous_uid=MOUSS[0], workdir=str(work))
    assert release.execute(ctx) is True and admission.entries(work) == {}
    assert release.execute(ctx) is False  # a teardown retried: nothing left to release


def test_the_feeder_keeps_a_listing_for_its_ttl_and_only_for_its_source(tmp_path, archive_server):
    from alma_regen.bulk import listed_files
    from alma_regen.errors import AlmaRegenError
    from alma_regen.staging.sources import open_source

    mous = MOUSS[0]
    build_archive(tmp_path / "archive", mous=mous, ebs=ebs_of(1), n_binaries=1, binary_size=1024)
    server = archive_server(tmp_path / "archive")
    source, work = open_source(server.url), tmp_path / "work"
    expected = {p.name: p.stat().st_size for p in (tmp_path / "archive").iterdir()}
    assert listed_files(source, mous, workdir=work, ttl_s=3600, now=1000.0) == expected
    server.server.shutdown()
    server.server.server_close()  # the archive is gone: only a kept answer can answer now
    assert listed_files(source, mous, workdir=work, ttl_s=3600, now=1000.0 + 3599) == expected
    with pytest.raises(AlmaRegenError):  # too old: asked again
        listed_files(source, mous, workdir=work, ttl_s=3600, now=1000.0 + 3601)
    with pytest.raises(AlmaRegenError):  # no keeping
        listed_files(source, mous, workdir=work, ttl_s=0, now=1001.0)
    other = open_source(server.url.rstrip("/") + "/other")
    with pytest.raises(AlmaRegenError):  # another source's answer is not this one's
        listed_files(other, mous, workdir=work, ttl_s=3600, now=1001.0)
