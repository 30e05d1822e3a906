"""The docker-compose topology without Docker: real processes on this machine.

api-server (the Task Execution API the workers talk to), scheduler,
dag-processor, triggerer and a Celery worker consuming `default,casa`, with
PostgreSQL as metadata database and result backend (a fresh database, dropped
afterwards) and Redis as broker (an empty database number). Pools and the
connections are created through the REST API, as an operator would; then
`alma_regenerate` runs end to end on the synthetic delivery, served by
serve-archive, and publishes to SeaweedFS.

Skips only when PostgreSQL or Redis are not reachable; under CI=true that is
a failure.
"""
import json
import os

import pytest

from airflow_procs import (AirflowCluster, postgres_db_exists, postgres_problem, redis_problem, scratch_postgres_db,
                           scratch_redis_db)

pytestmark = [pytest.mark.slow, pytest.mark.casa, pytest.mark.timeout(1200)]

RUN_TIMEOUT_S = 900


def _services_or_skip():
    problem = postgres_problem() or redis_problem()
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the Celery topology cannot run: {problem}")
        pytest.skip(problem)


def test_alma_regenerate_on_celery_topology(tmp_path, synth_delivery, archive_server, seaweedfs):
    _services_or_skip()
    archive = archive_server(synth_delivery["archive_dir"])
    bucket = seaweedfs.bucket("celery")
    products = f"s3://{bucket}/regen"
    mous = synth_delivery["mous_uid"]
    db_name = None
    cluster = None

    with scratch_redis_db() as redis_db, scratch_postgres_db() as (db_url, db_name):
        cluster = AirflowCluster(
            tmp_path / "airflow", db_url=db_url, executor="CeleryExecutor",
            broker_url=f"redis://127.0.0.1:6379/{redis_db}",
            env={"ALMA_REGEN_WORKDIR": tmp_path / "work", "ALMA_REGEN_PRODUCTS_URL": products,
                 "ALMA_REGEN_RETRY_DELAY_S": 5, "ALMA_REGEN_MAX_RETRY_DELAY_S": 20})
        with cluster:
            cluster.migrate()
            cluster.start_all(celery_queues="default,casa")
            cluster.wait_ready()
            for name, slots in (("casa", 2), ("alma_staging", 2)):
                cluster.api("POST", "/pools", {"name": name, "slots": slots, "description": "alma-regen test"})
            host, port = archive.url.split("://", 1)[1].rstrip("/").split(":")
            cluster.api("POST", "/connections", {"connection_id": "alma_request_handler", "conn_type": "http",
                                                 "host": host, "port": int(port), "schema": "http"})
            cluster.api("POST", "/connections", {
                "connection_id": "alma_products_s3", "conn_type": "aws", "login": seaweedfs.access_key,
                "password": seaweedfs.secret_key,
                "extra": json.dumps({"endpoint_url": seaweedfs.endpoint_url, "region_name": seaweedfs.region})})
            cluster.wait_dag("alma_regenerate")

            run_id = cluster.trigger("alma_regenerate", {"mous_uid": mous})
            state = cluster.wait_run("alma_regenerate", run_id, timeout=RUN_TIMEOUT_S)
            assert state == "success", cluster.failure_report("alma_regenerate", run_id)

            tis = cluster.task_instances("alma_regenerate", run_id)
            by_task = {}
            for t in tis:
                by_task.setdefault(t["task_id"], []).append(t)
            # Every EB was restored by its own mapped task, on the casa queue and pool, by the Celery worker.
            restores = by_task["restore_eb"]
            assert len(restores) == len(synth_delivery["ebs"]) == 2
            for t in restores + by_task["finish_calibration"] + by_task["fidelity"]:
                assert t["state"] == "success" and t["queue"] == "casa" and t["pool"] == "casa", t
            assert all(t["state"] == "success" and t["queue"] == "default" for t in by_task["stage_asdm"])
            assert all(t["pool"] == "alma_staging" for t in by_task["stage_asdm"] + by_task["stage_auxiliary"])
            assert by_task["publish"][0]["state"] == "success"
            assert all(t["hostname"] for t in tis if t["state"] == "success")

        assert cluster.all_stopped(), "Airflow processes (or their children) outlived the cluster"

    # The products are published: latest.json points at a manifest written last.
    s3 = seaweedfs.client()
    mous_f = mous.replace("uid://", "uid___").replace("/", "_")
    latest = json.loads(s3.get_object(Bucket=bucket, Key=f"regen/{mous_f}/latest.json")["Body"].read())
    assert latest["mous_uid"] == mous
    manifest_key = latest["manifest"].split(f"s3://{bucket}/", 1)[1]
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    assert manifest["mous_uid"] == mous and manifest["run"] in run_id.replace(":", "_").replace("+", "_")
    assert any(o["key"].endswith(".fits") for o in manifest["outputs"])
    assert manifest["fidelity"]["ok"] is True
    # Nothing left behind: the scratch database is gone, the broker's database empty again.
    assert not postgres_db_exists(db_name)
    import redis
    assert redis.Redis(host="127.0.0.1", port=6379, db=redis_db).dbsize() == 0
