"""A real multi-process Airflow for tests: api-server, scheduler, dag-processor,
triggerer and (for CeleryExecutor) Celery workers, each a subprocess in its own
process group with its own log file, on an isolated AIRFLOW_HOME.

    with AirflowCluster(home, db_url=..., executor="CeleryExecutor", broker_url=...) as af:
        af.migrate()
        af.start_all(celery_queues="default,casa")
        af.wait_ready()
        af.api("POST", "/pools", {...})
        run = af.trigger("alma_regenerate", {"mous_uid": ...})
        af.wait_run("alma_regenerate", run, timeout=600)

Everything listens on 127.0.0.1 with random free ports. Leaving the `with`
block stops every process group (TERM, then KILL) even when the test failed.
The REST API is reached without credentials: the simple auth manager runs with
`simple_auth_manager_all_admins` (a test-only setting).
Also: PostgreSQL/Redis probes and a throw-away PostgreSQL database.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
TERMINAL = {"success", "failed"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def postgres_problem() -> str | None:
    """None when the local PostgreSQL accepts us (trust auth), else why not."""
    if not reachable(PG_HOST, PG_PORT):
        return f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT}"
    try:
        import psycopg2
        psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres", connect_timeout=5).close()
    except Exception as exc:  # noqa: BLE001
        return f"PostgreSQL at {PG_HOST}:{PG_PORT} refuses the postgres user: {exc}"
    return None


def redis_problem() -> str | None:
    if not reachable(REDIS_HOST, REDIS_PORT):
        return f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}"
    try:
        import redis
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=5).ping()
    except Exception as exc:  # noqa: BLE001
        return f"Redis at {REDIS_HOST}:{REDIS_PORT} does not answer: {exc}"
    return None


def free_redis_db() -> int:
    """An empty Redis database number (1..15): we only take an empty one."""
    import redis
    for n in range(15, 0, -1):
        if redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=n).dbsize() == 0:
            return n
    raise RuntimeError("no empty Redis database among 1..15")


@contextmanager
def scratch_redis_db():
    """An empty Redis database number for a broker; emptied again afterwards (even on failure)."""
    import redis
    n = free_redis_db()
    try:
        yield n
    finally:
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=n).flushdb()


@contextmanager
def scratch_postgres_db(prefix: str = "alma_regen_ci"):
    """A fresh PostgreSQL database; yields its SQLAlchemy URL; dropped afterwards (even on failure)."""
    import psycopg2
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres", connect_timeout=5)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+psycopg2://postgres@{PG_HOST}:{PG_PORT}/{name}", name
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def postgres_db_exists(name: str) -> bool:
    import psycopg2
    with psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres") as c, c.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        return cur.fetchone() is not None


class AirflowCluster:
    """An isolated Airflow made of real processes."""

    def __init__(self, home: Path, *, db_url: str | None = None, executor: str = "LocalExecutor",
                 broker_url: str | None = None, env: dict | None = None):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "plugins").mkdir(exist_ok=True)  # the plugin comes by its entry point
        (self.home / "proc-logs").mkdir(exist_ok=True)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.executor = executor
        db_url = db_url or f"sqlite:///{self.home / 'airflow.db'}"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ALMA_REGEN_"))}
        # Every task process imports our modules anew: without their bytecode cached (a shell
        # that exports PYTHONDONTWRITEBYTECODE) each one compiles them again, 30-60 ms of CPU
        # per task here (bench/orchestration.py). __pycache__/ is git-ignored.
        base.pop("PYTHONDONTWRITEBYTECODE", None)
        base.update({
            "AIRFLOW_HOME": str(self.home),
            "PYTHONUNBUFFERED": "1",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.home / "plugins"),
            "AIRFLOW__CORE__EXECUTOR": executor,
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
            "AIRFLOW__CORE__AUTH_MANAGER":
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",  # as docker-compose.yaml
            # As docker-compose.yaml: how long a worker slot stays taken after its task process
            # ended, and how late a skipped or failed task's end is recorded (Airflow 3.3.2).
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "300",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
        })
        if executor == "CeleryExecutor":
            base.update({
                "AIRFLOW__CELERY__BROKER_URL": broker_url,
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + db_url.replace("postgresql+psycopg2://", "postgresql://"),
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4",
                "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
            })
        base.update({k: str(v) for k, v in (env or {}).items()})
        self.env = base
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs = []

    # ------------------------------------------------------------- processes
    def cli(self, *args, timeout=300, check=True) -> subprocess.CompletedProcess:
        r = subprocess.run([AIRFLOW, *args], env=self.env, cwd=self.home, capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({r.returncode}):\n"
                               f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r

    def migrate(self):
        self.cli("db", "migrate", timeout=600)

    def start(self, name: str, *args):
        log = open(self.home / "proc-logs" / f"{name}.log", "wb")
        self._logs.append(log)
        self.procs[name] = subprocess.Popen([AIRFLOW, *args], env=self.env, cwd=self.home, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        return self.procs[name]

    def start_all(self, celery_queues: str | None = None, workers: int = 1):
        self.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.port))
        self.start("scheduler", "scheduler")
        self.start("dag-processor", "dag-processor")
        self.start("triggerer", "triggerer")
        if self.executor == "CeleryExecutor":
            for i in range(workers):
                self.start(f"worker-{i}", "celery", "worker", "-q", celery_queues or "default",
                           "-H", f"alma-test-worker-{i}@%h", "--without-gossip", "--without-mingle")

    def check_alive(self):
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise RuntimeError(f"Airflow processes exited: {dead}\n{self.diagnostics()}")

    def stop(self):
        for p in self.procs.values():
            _signal_group(p, signal.SIGTERM)
        end = time.monotonic() + 30
        for p in self.procs.values():
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(p, signal.SIGKILL)  # the group: task children and CASA included
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for log in self._logs:
            log.close()

    def all_stopped(self) -> bool:
        for p in self.procs.values():
            if p.poll() is None:
                return False
            try:
                os.killpg(p.pid, 0)
                return False  # a child of the group is still there
            except ProcessLookupError:
                pass
            except PermissionError:
                return False
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def log_tail(self, name: str, chars: int = 4000) -> str:
        path = self.home / "proc-logs" / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def diagnostics(self, chars: int = 3000) -> str:
        parts = [f"----- {n} (exit {p.poll()}) -----\n{self.log_tail(n, chars)}" for n, p in self.procs.items()]
        for f in sorted((self.home / "logs").rglob("*.log"))[-12:] if (self.home / "logs").exists() else []:
            text = f.read_text(errors="replace")
            if "error" in text.lower() or "Traceback" in text:
                parts.append(f"----- task log {f.relative_to(self.home)} -----\n{text[-chars:]}")
        return "\n".join(parts)

    # ------------------------------------------------------------- REST API
    def api(self, method: str, path: str, body=None, timeout: float = 30, ok=(200, 201, 204)):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.base_url}/api/v2{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            if exc.code in ok:
                return json.loads(detail) if detail else None
            raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {detail[:2000]}") from None

    def get(self, url: str, timeout: float = 10) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url if "://" in url else self.base_url + url, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, timeout: float = 180):
        """The api-server answers and scheduler, triggerer and dag-processor report healthy."""
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            self.check_alive()
            try:
                h = self.api("GET", "/monitor/health", timeout=5)
                last = h
                if all((h.get(k) or {}).get("status") == "healthy" for k in
                       ("metadatabase", "scheduler", "triggerer", "dag_processor")):
                    self.warm_execution_api()
                    return h
            except (RuntimeError, OSError):
                pass
            time.sleep(1)
        raise TimeoutError(f"Airflow not ready after {timeout} s (health {last})\n{self.diagnostics()}")

    def warm_execution_api(self, timeout: float = 60):
        """One request to the Task Execution API: the api-server builds it at its first request
        (about 3 s here, Airflow 3.3.2), which would otherwise fall on the first task of the
        first run (bench/orchestration.py measured it). As docker-compose.yaml's healthcheck."""
        status, body = self.get("/execution/health", timeout=timeout)
        if status != 200:
            raise RuntimeError(f"the Task Execution API answers {status}: {body[:500]!r}")

    def wait_dag(self, dag_id: str, timeout: float = 180):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.check_alive()
            try:
                dag = self.api("GET", f"/dags/{dag_id}", timeout=5)
                if dag and not dag.get("is_paused"):
                    return dag
                if dag and dag.get("is_paused"):
                    self.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})
            except (RuntimeError, OSError):
                pass
            time.sleep(1)
        errors = self.api("GET", "/importErrors")
        raise TimeoutError(f"DAG {dag_id} not parsed after {timeout} s; import errors: {errors}\n"
                           f"{self.diagnostics()}")

    def trigger(self, dag_id: str, conf: dict) -> str:
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{_q(run_id)}")["state"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        end = time.monotonic() + timeout
        state = None
        while time.monotonic() < end:
            self.check_alive()
            state = self.run_state(dag_id, run_id)
            if state in TERMINAL:
                return state
            time.sleep(2)
        raise TimeoutError(f"run {run_id} of {dag_id} still {state} after {timeout} s:\n"
                           f"{json.dumps(self.task_instances(dag_id, run_id), indent=1)}\n{self.diagnostics()}")

    def task_instances(self, dag_id: str, run_id: str) -> list:
        r = self.api("GET", f"/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances?limit=500")
        return [{k: t.get(k) for k in ("task_id", "map_index", "state", "try_number", "queue", "pool",
                                       "hostname", "executor")} for t in r["task_instances"]]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1) -> str:
        path = (f"/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances/{task_id}/logs/{try_number}"
                f"?full_content=true&map_index={map_index}")
        try:
            r = self.api("GET", path)
        except RuntimeError as exc:
            return str(exc)
        content = r.get("content") if isinstance(r, dict) else r
        if isinstance(content, list):
            return "\n".join(c.get("event", str(c)) if isinstance(c, dict) else str(c) for c in content)
        return str(content)

    def failure_report(self, dag_id: str, run_id: str) -> str:
        tis = self.task_instances(dag_id, run_id)
        parts = [json.dumps(tis, indent=1)]
        for t in tis:
            if t["state"] in ("failed", "up_for_retry"):
                parts.append(f"----- log of {t['task_id']}[{t['map_index']}] -----\n"
                             + self.task_log(dag_id, run_id, t["task_id"], max(1, t["try_number"] or 1),
                                             t["map_index"])[-4000:])
        return "\n".join(parts) + "\n" + self.diagnostics(1500)


def _q(s: str) -> str:
    from urllib.parse import quote
    return quote(s, safe="")


def _signal_group(p: subprocess.Popen, sig):
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _fernet_key() -> str:
    from cryptography.fernet import Fernet
    return Fernet.generate_key().decode()
