"""A real Airflow (scheduler, triggerer, dag-processor, api-server, LocalExecutor on
SQLite) that has run two alma_regenerate runs, shared by the alert and UI tests:

  run "late"   the synthetic MOUS with a 1-second deadline (the `alma_regen`
               Variable: deadline_seconds=1); it succeeds and publishes to SeaweedFS
  run "failed" a MOUS the archive does not have: fails for good at its first archive request
               (a permanent error, no retries); deadline 20 s, so its deadline
               also passes after it failed, while the test watches

Alerts go to a local webhook listener, metrics (StatsD) to a local UDP listener.
"""
from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from airflow_procs import AirflowCluster


MISSING_MOUS = "uid://A001/X9999/X999"
FAILED_RUN_DEADLINE_S = 20


class WebhookListener:
    """A local HTTP server that records every JSON POST (the alert webhook)."""

    def __init__(self):
        self.events, self.lock = [], threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.lock:
                    outer.events.append(json.loads(body or b"{}"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def of(self, **match) -> list:
        with self.lock:
            return [e for e in self.events if all(e.get(k) == v for k, v in match.items())]

    def wait_for(self, timeout: float, **match) -> list:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = self.of(**match)
            if found:
                return found
            time.sleep(0.5)
        return []

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class StatsdListener:
    """UDP on 127.0.0.1: the StatsD lines Airflow components send."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines, self._stop = [], False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, OSError):
                continue
            self.lines.extend(data.decode(errors="replace").splitlines())

    def close(self):
        self._stop = True
        self.thread.join(2)
        self.sock.close()


@dataclass
class AlertingAirflow:
    cluster: AirflowCluster
    webhook: WebhookListener
    statsd: StatsdListener
    mous: str
    bucket: str
    products_url: str
    late_run: str
    late_state: str
    failed_run: str
    failed_state: str
    failed_deadline_callback: dict = field(default_factory=dict)


def _db_rows(db_path, sql, args=()):
    with sqlite3.connect(db_path) as c:
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute(sql, args)]


@pytest.fixture(scope="session")
def alerting_airflow(tmp_path_factory, synth_delivery, seaweedfs):
    from alma_regen_dev.serve_archive import ArchiveServer

    root = tmp_path_factory.mktemp("alerting")
    archive = ArchiveServer(synth_delivery["archive_dir"], "127.0.0.1", 0)
    threading.Thread(target=archive.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    webhook, statsd = WebhookListener(), StatsdListener()
    bucket = seaweedfs.bucket("alerts")
    products = f"s3://{bucket}/regen"
    host, port = archive.url.split("://", 1)[1].rstrip("/").split(":")
    env = {
        "ALMA_REGEN_WORKDIR": root / "work", "ALMA_REGEN_PRODUCTS_URL": products,
        "ALMA_REGEN_NOTIFY_WEBHOOK": webhook.url,
        "ALMA_REGEN_RETRY_DELAY_S": 2, "ALMA_REGEN_MAX_RETRY_DELAY_S": 10,
        "AIRFLOW_CONN_ALMA_REQUEST_HANDLER": json.dumps(
            {"conn_type": "http", "host": host, "port": int(port), "schema": "http"}),
        "AIRFLOW_CONN_ALMA_PRODUCTS_S3": json.dumps(
            {"conn_type": "aws", "login": seaweedfs.access_key, "password": seaweedfs.secret_key,
             "extra": {"endpoint_url": seaweedfs.endpoint_url, "region_name": seaweedfs.region}}),
        "AIRFLOW__METRICS__STATSD_ON": "True", "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": statsd.port, "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
        "AIRFLOW__CORE__PARALLELISM": 4,
    }
    cluster = AirflowCluster(root / "airflow", executor="LocalExecutor", env=env)
    try:
        cluster.migrate()
        cluster.start_all()
        cluster.wait_ready()
        for name, slots in (("casa", 2), ("alma_staging", 2)):
            cluster.api("POST", "/pools", {"name": name, "slots": slots, "description": "alma-regen test"})
        cluster.api("POST", "/variables", {"key": "alma_regen", "value": json.dumps({"deadline_seconds": 1})})
        cluster.wait_dag("alma_regenerate")

        late = cluster.trigger("alma_regenerate", {"mous_uid": synth_delivery["mous_uid"]})
        late_state = cluster.wait_run("alma_regenerate", late, timeout=600)

        cluster.api("PATCH", "/variables/alma_regen",
                    {"key": "alma_regen", "value": json.dumps({"deadline_seconds": FAILED_RUN_DEADLINE_S})})
        failed = cluster.trigger("alma_regenerate", {"mous_uid": MISSING_MOUS})
        failed_state = cluster.wait_run("alma_regenerate", failed, timeout=300)
        webhook.wait_for(60, event="run_failed", run_id=failed)
        # Let the failed run's own deadline pass and its callback run (it must stay silent).
        db = root / "airflow" / "airflow.db"
        callback = {}
        end = time.monotonic() + FAILED_RUN_DEADLINE_S + 90
        while time.monotonic() < end:
            rows = _db_rows(db, "SELECT d.deadline_time, d.missed, c.state AS callback_state, c.output "
                                "FROM deadline d JOIN dag_run r ON r.id = d.dagrun_id "
                                "LEFT JOIN callback c ON c.id = d.callback_id WHERE r.run_id = ?", (failed,))
            if rows and rows[0]["missed"] and rows[0]["callback_state"] in ("success", "failed"):
                callback = rows[0]
                break
            time.sleep(1)
        time.sleep(2)  # a stray webhook POST would have arrived by now
        yield AlertingAirflow(cluster, webhook, statsd, synth_delivery["mous_uid"], bucket, products,
                              late, late_state, failed, failed_state, callback)
    finally:
        cluster.stop()
        webhook.close()
        statsd.close()
        archive.shutdown()
        archive.server_close()
