"""An isolated Airflow for tests: its own AIRFLOW_HOME, SQLite database, our dags/.

Used with `airflow dags test` (a real Airflow run of the real DAG, in one
process, against the real servers of the other fixtures).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


@dataclass
class AirflowHome:
    home: Path
    env: dict = field(default_factory=dict)

    def run(self, *args, timeout=900, env=None, check=False) -> subprocess.CompletedProcess:
        return subprocess.run([AIRFLOW, *args], env={**self.env, **(env or {})}, cwd=self.home,
                              capture_output=True, text=True, timeout=timeout, check=check)

    def dags_test(self, dag_id: str, conf: dict, *, env=None, timeout=900) -> subprocess.CompletedProcess:
        return self.run("dags", "test", dag_id, "-c", json.dumps(conf), env=env, timeout=timeout)

    def _json(self, *args):
        """The JSON an `airflow ... -o json` command prints (warnings may come first)."""
        r = self.run(*args, "-o", "json", check=True)
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith(("[", "{")))
        return json.loads(line)

    def last_run_id(self, dag_id: str) -> str:
        runs = self._json("dags", "list-runs", dag_id)
        return max(runs, key=lambda x: x["start_date"] or "")["run_id"]

    def task_states(self, dag_id: str, run_id: str) -> dict:
        """{(task_id, map_index): {state, try_number}} of one run, from the metadata database
        (the CLI does not print try numbers)."""
        import sqlite3
        with sqlite3.connect(self.home / "airflow.db") as db:
            rows = db.execute("SELECT task_id, map_index, state, try_number FROM task_instance "
                              "WHERE dag_id = ? AND run_id = ?", (dag_id, run_id)).fetchall()
        return {(t, m): {"state": st, "try_number": n} for t, m, st, n in rows}


def s3_conn(s3, archive_url: str | None = None) -> str:
    """An aws connection (JSON form) to the test S3 server; `archive_url` names the archive mirror
    in it (the alma_archive_s3 connection's extra)."""
    extra = {"endpoint_url": s3.endpoint_url, "region_name": s3.region}
    if archive_url:
        extra["archive_url"] = archive_url
    return json.dumps({"conn_type": "aws", "login": s3.access_key, "password": s3.secret_key, "extra": extra})


def connection_env(request_handler_url: str | None = None, s3=None) -> dict:
    """AIRFLOW_CONN_* for the project's connections (JSON form)."""
    env = {}
    if request_handler_url:
        scheme, rest = request_handler_url.split("://", 1)
        host, port = rest.rstrip("/").split(":")
        env["AIRFLOW_CONN_ALMA_REQUEST_HANDLER"] = json.dumps(
            {"conn_type": "http", "host": host, "port": int(port), "schema": scheme})
    if s3 is not None:
        aws = s3_conn(s3)
        env["AIRFLOW_CONN_ALMA_PRODUCTS_S3"] = aws
        env["AIRFLOW_CONN_ALMA_ARCHIVE_S3"] = aws
    return env


def make_airflow_home(path: Path, **extra_env) -> AirflowHome:
    path.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ALMA_REGEN_"))}
    env.update({
        "AIRFLOW_HOME": str(path),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{path / 'airflow.db'}",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        # `airflow dags test` of 3.3.2 crashes at the end of a run of a DAG with a
        # deadline (apache/airflow#73428): the alert is tested with a real scheduler.
        "ALMA_REGEN_DEADLINE_MINUTES": "-1",
    })
    env.update({k: str(v) for k, v in extra_env.items()})
    home = AirflowHome(path, env)
    r = home.run("db", "migrate", timeout=600)
    if r.returncode:
        raise RuntimeError(f"airflow db migrate failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return home
