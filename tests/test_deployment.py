"""docker-compose.yaml and Dockerfile, validated offline (Docker's engine does not run here).

`docker-compose config -q` (Debian's docker-compose 1.29, or `docker compose`) checks the
file as Compose reads it: anchors, `<<:` merges, `depends_on: condition:`. The topology
itself is asserted on the YAML after merging, as Compose would see it.
"""
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from needs import skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yaml"
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker", "airflow-init")


def _compose_cmd():
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        r = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if r.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())  # safe_load resolves anchors and `<<:` merges


def test_compose_config_validates():
    cmd = _compose_cmd()
    if cmd is None:
        skip_or_fail("neither docker-compose nor `docker compose` is installed (apt-get install docker-compose)")
    r = subprocess.run([*cmd, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    # Scaling the worker must be possible: the rendered config names no container and maps no host port.
    r = subprocess.run([*cmd, "-f", str(COMPOSE), "config"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    worker = yaml.safe_load(r.stdout)["services"]["airflow-worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["command"] in ("celery worker -q default,casa", ["celery", "worker", "-q", "default,casa"])


def test_topology(compose):
    services = compose["services"]
    assert set(services) == set(AIRFLOW_SERVICES) | {"postgres", "redis", "seaweedfs"}
    for name in AIRFLOW_SERVICES:
        svc = services[name]
        env = svc["environment"]
        # The anchor was merged into every Airflow service.
        assert svc["image"].startswith("${ALMA_REGEN_IMAGE") and svc["build"] == "."
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://") and \
            "@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://") and "@redis:6379" in \
            env["AIRFLOW__CELERY__BROKER_URL"]
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
        assert env["ALMA_REGEN_WORKDIR"] == "/opt/alma/work"
        assert env["CASASITECONFIG"] == "/opt/alma-regen/include/casa/casasiteconfig.py"
        assert env["ALMA_REGEN_INCLUDE"] == "/opt/alma-regen/include"
        assert env["ALMA_REGEN_PRODUCTS_URL"].startswith("${ALMA_REGEN_PRODUCTS_URL:-s3://")
        # Shared volumes: the working folders, dags, plugins and include.
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        assert mounts["/opt/alma/work"] == "alma-work"
        assert mounts["/opt/airflow/dags"] == "./dags"
        assert mounts["/opt/alma-regen/plugins"] == "./plugins"
        assert mounts["/opt/alma-regen/include"] == "./include"
        # Everything waits for healthy PostgreSQL and Redis.
        for dep in ("postgres", "redis"):
            assert svc["depends_on"][dep]["condition"] == "service_healthy", name
        if name != "airflow-init":
            assert svc["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
            assert "test" in svc["healthcheck"], name
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"
    assert services["airflow-init"]["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
    for name in ("postgres", "redis", "seaweedfs"):
        assert "test" in services[name]["healthcheck"], name
    assert set(compose["volumes"]) >= {"alma-work", "postgres-db", "airflow-logs", "airflow-config",
                                       "seaweedfs-data"}


def test_worker_and_init(compose):
    services = compose["services"]
    assert services["airflow-worker"]["command"] == "celery worker -q default,casa"
    assert services["airflow-worker"]["environment"]["DUMB_INIT_SETSID"] == "0"
    assert "ports" not in services["airflow-worker"] and "container_name" not in services["airflow-worker"]
    # The CASA sandbox (bubblewrap) needs user namespaces inside the worker's container.
    assert {"seccomp:unconfined", "apparmor:unconfined"} <= set(services["airflow-worker"]["security_opt"])
    init = "\n".join(services["airflow-init"]["command"])
    assert "airflow db migrate" in init
    assert "airflow pools set casa " in init and "airflow pools set alma_staging " in init
    # The admin: the simple auth manager's users, the password file written by airflow-init.
    env = services["airflow-init"]["environment"]
    assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("simple_auth_manager.SimpleAuthManager")
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].endswith(":admin")
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] in init
    assert "airflow connections add alma_products_s3" in init and "http://seaweedfs:8333" in init
    seaweed = services["seaweedfs"]
    assert seaweed["image"].startswith("chrislusf/seaweedfs")
    assert "-s3" in seaweed["command"] and "server" in seaweed["command"]
    for cmd, svc in (("api-server", "airflow-apiserver"), ("scheduler", "airflow-scheduler"),
                     ("dag-processor", "airflow-dag-processor"), ("triggerer", "airflow-triggerer")):
        assert services[svc]["command"] == cmd
    assert services["airflow-apiserver"]["ports"] == ["8080:8080"]
    # The S3 identities file the store mounts exists and holds the keys airflow-init defaults to.
    s3_json = (ROOT / "include/seaweedfs/s3.json").read_text()
    assert '"accessKey": "alma"' in s3_json and '"secretKey": "alma-secret"' in s3_json


def test_dockerfile():
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    assert lines[0] == "FROM apache/airflow:3.3.2-python3.11"
    text = "\n".join(lines)
    assert "COPY --chown=airflow:0 requirements.txt constraints.txt ./" in text
    assert "-r requirements.txt -c constraints.txt" in text
    assert "COPY --chown=airflow:0 plugins ./plugins" in text and "COPY --chown=airflow:0 include ./include" in text
    # The product only: the developer tools (devtools/, alma-regen-dev) stay out of the image.
    assert "RUN pip install --no-cache-dir --no-deps -e .\n" in text + "\n"
    assert "devtools" not in text and "alma-regen-dev" not in text
    # No egg-info clean-up step: setup.cfg builds the egg-info outside plugins/ (on sys.path in
    # an editable install), in a folder the image has before the install.
    assert "egg-info" not in text
    assert "COPY --chown=airflow:0 pyproject.toml setup.cfg README.md ./" in text
    egg_base = setup_cfg_egg_base()
    assert egg_base not in ("plugins", "dags") and f"COPY --chown=airflow:0 {egg_base} ./{egg_base}" in text
    assert "CASASITECONFIG=/opt/alma-regen/include/casa/casasiteconfig.py" in text
    assert "ALMA_REGEN_INCLUDE=/opt/alma-regen/include" in text
    assert "bubblewrap" in text  # the sandbox every CASA child runs in
    assert (ROOT / "include/casa/casasiteconfig.py").is_file()
    # Every file the Dockerfile copies exists in the build context.
    for ln in lines:
        if ln.startswith("COPY"):
            for src in ln.split()[1:-1]:
                if not src.startswith("--"):
                    assert (ROOT / src).exists(), src
    # What the image installs is pinned.
    reqs = [r for r in (ROOT / "requirements.txt").read_text().splitlines() if r and not r.startswith("#")]
    assert reqs and all("==" in r for r in reqs), reqs
    assert "apache-airflow==3.3.2" in reqs


def setup_cfg_egg_base() -> str:
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg["egg_info"]["egg_base"]


def test_installs_leave_no_egg_info_on_sys_path():
    """The Makefile installs the product and the dev tools, the Dockerfile the product, both
    without a clean-up step; the egg-info builds land in a folder that is on no sys.path."""
    make = (ROOT / "Makefile").read_text()
    assert "pip install -q --no-deps -e . -e devtools" in make
    assert "egg-info" not in make
    assert setup_cfg_egg_base() == "include" and (ROOT / "include").is_dir()
    # This interpreter's sys.path (plugins/ on it through the editable install) holds each
    # distribution once: a second alma-regen would make Airflow load the plugin twice.
    import importlib.metadata as md
    found = {}
    for d in md.distributions():
        if (d.metadata["Name"] or "").startswith("alma-regen"):
            found.setdefault(d.metadata["Name"], []).append(str(getattr(d, "_path", d)))
    assert {name: len(paths) for name, paths in found.items()} == {"alma-regen": 1, "alma-regen-dev": 1}, found


def test_scheduler_settings_and_warm_up_alike(compose, tmp_path):
    """The deployment, the clusters of the tests and benchmarks, and the demo run the scheduler
    alike, and each calls the Task Execution API once before the first task: the api-server
    builds it at its first request (about 3 s, bench/orchestration.py)."""
    import inspect

    from airflow_procs import AirflowCluster
    from alma_regen_dev import demo

    # The scheduler's idle sleep, and the supervisor's heartbeat window (how soon a worker slot
    # is free again after its task process ended, and a skipped or failed step's end is seen).
    for service, key in (("airflow-scheduler", "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"),
                         ("airflow-worker", "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL")):
        compose_value = compose["services"][service]["environment"][key]
        assert compose_value.startswith("${") and compose_value.endswith("}")
        default = compose_value.split(":-", 1)[1].rstrip("}")
        assert AirflowCluster(tmp_path / "af").env[key] == default
        assert demo.Airflow(tmp_path / "demo", {}, 8080).env[key] == default
    # execute_tasks_new_python_interpreter stays at its default (False): a task process is a fork.
    for env in (compose["services"]["airflow-worker"]["environment"], AirflowCluster(tmp_path / "af2").env):
        assert "AIRFLOW__CORE__EXECUTE_TASKS_NEW_PYTHON_INTERPRETER" not in env
    assert "/execution/health" in " ".join(compose["services"]["airflow-apiserver"]["healthcheck"]["test"])
    assert "/execution/health" in inspect.getsource(AirflowCluster.wait_ready) + \
        inspect.getsource(AirflowCluster.warm_execution_api)
    assert "/execution/health" in inspect.getsource(demo.Airflow.start)
