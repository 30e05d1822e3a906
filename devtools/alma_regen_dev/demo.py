"""`alma-regen demo` (README's first command): the main job end to end on embedded defaults.

A synthetic delivery made on the spot with real CASA, served by a local
request handler (`serve-archive`); a local S3 store (SeaweedFS) for the
products; Airflow standalone on SQLite. The demo triggers `alma_regenerate`,
follows it task by task to the end, prints where the products are and how to
open the UI, and leaves the UI running until stopped (Ctrl-C). A second run
reuses what exists: the synthetic delivery, the Airflow database, the staged
data, and the published products (the run then stops at `check_published`).
Everything lives under .demo/ in the current folder.

The terminal shows steps and progress only: CASA's output (thousands of lines)
goes to .demo/demo.log, the log of every task to Airflow's logs folder, and the
demo names both.
"""
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from alma_regen import naming
from alma_regen.config import settings
from alma_regen.errors import AlmaRegenError
from alma_regen.paths import include_dir

from .local_s3 import seaweedfs_server
from .serve_archive import ArchiveServer
from .synth import synthesize

DAG_ID = "alma_regenerate"
BUCKET = "alma-products"


class CasaProgress(logging.Handler):
    """The terminal's view of a CASA child: the CASA task it is in, and how much it logged.

    CASA's log lines read "date time PRIORITY origin::method message"; a task's
    origin is its lower-case name (tclean, importasdm). On a terminal one line is
    rewritten in place; otherwise each task is printed once."""

    ORIGIN = re.compile(r"^\S+ \S+\s+\w+\s+([a-z][a-z0-9_]*)::")

    def __init__(self, stream=None):
        super().__init__(logging.INFO)
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.lines = self.warnings = 0
        self.task, self.seen, self.t0 = None, set(), time.monotonic()

    def emit(self, record):
        self.lines += 1
        self.warnings += record.levelno >= logging.WARNING
        m = self.ORIGIN.match(record.getMessage())
        if not m or m.group(1) == self.task:
            return
        self.task = m.group(1)
        if self.tty:
            self.stream.write(f"\r\033[K  {time.monotonic() - self.t0:5.0f} s  CASA {self.task} "
                              f"({self.lines} log lines)")
        elif self.task not in self.seen:
            self.stream.write(f"  {time.monotonic() - self.t0:5.0f} s  CASA {self.task}\n")
        self.seen.add(self.task)
        self.stream.flush()

    def end(self):
        if self.tty and self.task:
            self.stream.write("\r\033[K")
            self.stream.flush()


# The loggers whose records (CASA's output among them) go to the demo's log file: the
# library's and the dev tools' (synth's CASA child logs under alma_regen_dev.synth).
LOGGERS = ("alma_regen", "alma_regen_dev")


@contextmanager
def logs_to(path: Path, *extra: logging.Handler):
    """Send the library's and the dev tools' log (CASA's output among it) to `path`, and to
    `extra`, not the terminal."""
    loggers = [logging.getLogger(name) for name in LOGGERS]
    fh = logging.FileHandler(path, encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = [(lg.propagate, lg.level) for lg in loggers]
    handlers = [fh, *extra]
    for lg in loggers:
        for h in handlers:
            lg.addHandler(h)
        lg.propagate, lg.level = False, logging.INFO
    try:
        yield
    finally:
        for lg, (propagate, level) in zip(loggers, saved):
            for h in handlers:
                lg.removeHandler(h)
            lg.propagate, lg.level = propagate, level
        fh.close()


def _synthetic(root: Path, log_file: Path) -> dict:
    """The synthetic delivery: made once, reused while its archive is complete."""
    record = root / "synth.json"
    if record.is_file():
        s = json.loads(record.read_text())
        if all((Path(s["archive_dir"]) / f["name"]).is_file() for f in s["files"]):
            print(f"demo: reusing the synthetic delivery of {s['mous_uid']} in {s['archive_dir']}")
            return s
    print(f"demo: making a synthetic ALMA delivery with real CASA (about 20 s; CASA's log: {log_file}) ...",
          flush=True)
    t0 = time.monotonic()
    progress = CasaProgress()
    with logs_to(log_file, progress):
        try:
            s = synthesize(root / "synth", ebs=2, seed=1)
        finally:
            progress.end()
    print(f"demo: made in {time.monotonic() - t0:.0f} s; CASA logged {progress.lines} lines "
          f"({progress.warnings} at warning or above) to {log_file}", flush=True)
    record.write_text(json.dumps(s, indent=1))
    return s


class Airflow:
    """Airflow standalone in its own process group, and the CLI against it."""

    def __init__(self, home: Path, env: dict, port: int):
        self.home, self.port = home, port
        bindir = str(Path(sys.executable).parent)
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}, **env,
                    "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "AIRFLOW_HOME": str(home),
                    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                    "AIRFLOW__CORE__DAGS_FOLDER": str(include_dir().parent / "dags"),
                    "AIRFLOW__API__PORT": str(port), "AIRFLOW__API__BASE_URL": f"http://localhost:{port}",
                    # Workers reach the Task Execution API on our port, not the default 8080.
                    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/",
                    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                    # As docker-compose.yaml and tests/airflow_procs.py: the scheduler's idle sleep
                    # (default 1 s) is the latency of every task hand-over (bench/orchestration.py).
                    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
                    # As docker-compose.yaml: a skipped or failed step's end is seen within 1 s, not 5 s.
                    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1"}
        self.airflow = str(Path(bindir) / "airflow")
        self.proc = None

    def cli(self, *args, check=True) -> str:
        r = subprocess.run([self.airflow, *args], env=self.env, capture_output=True, text=True, timeout=300)
        if check and r.returncode:
            raise AlmaRegenError(f"airflow {' '.join(args[:2])} failed: {(r.stderr or r.stdout)[-500:]}")
        return r.stdout

    def json(self, *args):
        out = self.cli(*args, "-o", "json")
        line = next((ln for ln in out.splitlines() if ln.startswith(("[", "{"))), "[]")
        return json.loads(line)

    def start(self):
        self.home.mkdir(parents=True, exist_ok=True)
        import socket
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                raise AlmaRegenError(f"port {self.port} is in use: stop what runs there or pass --port")
        self.cli("db", "migrate")
        log = open(self.home / "standalone.log", "ab")
        self.proc = subprocess.Popen([self.airflow, "standalone"], env=self.env, cwd=self.home, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AlmaRegenError(f"airflow standalone exited; see {self.home / 'standalone.log'}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v2/monitor/health", timeout=3):
                    pass
                # The Task Execution API is built at its first request (about 3 s): paid here,
                # not by the run's first task (bench/orchestration.py).
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/execution/health", timeout=30):
                    break
            except OSError:
                time.sleep(2)
        else:
            raise AlmaRegenError(f"Airflow did not come up in 4 minutes; see {self.home / 'standalone.log'}")
        while time.monotonic() < deadline:
            if any(d["dag_id"] == DAG_ID for d in self.json("dags", "list")):
                return
            time.sleep(3)
        raise AlmaRegenError(f"{DAG_ID} was not parsed; see `airflow dags list-import-errors`")

    def stop(self):
        """Stop standalone and everything it started (some components leave its group)."""
        import psutil
        if not self.proc or self.proc.poll() is not None:
            return
        family = [psutil.Process(self.proc.pid)]
        try:
            family += family[0].children(recursive=True)
        except psutil.Error:
            pass
        for p in family:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(family, timeout=30)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass

    def password(self) -> str:
        f = self.home / "simple_auth_manager_passwords.json.generated"
        try:
            return json.loads(f.read_text()).get("admin", "?")
        except (OSError, ValueError):
            return "? (see standalone.log)"


def follow(af: Airflow, run_id: str, limit_s: float = 1800) -> str:
    """Print each task's state as it changes, until the run ends; return its state."""
    seen = {}
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        for t in af.json("tasks", "states-for-dag-run", DAG_ID, run_id):
            key = t["task_id"] + (f"[{t['map_index']}]" if str(t.get("map_index", "")) not in ("", "-1") else "")
            if t["state"] and seen.get(key) != t["state"]:
                seen[key] = t["state"]
                print(f"  {time.monotonic() - t0:6.0f} s  {key:<24} {t['state']}", flush=True)
        run = next((r for r in af.json("dags", "list-runs", DAG_ID) if r["run_id"] == run_id), None)
        if run and run["state"] in ("success", "failed"):
            if seen.get("check_published") == "skipped":
                print("demo: already published with the same inputs and CASA: nothing to redo "
                      "(trigger with force=true to regenerate anyway)")
            return run["state"]
        time.sleep(3)
    return "running"


def run_demo(root=".demo", port: int = 8080, wait: bool = True) -> str:
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    # A `kill` must stop Airflow and SeaweedFS too: let the finally blocks run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    log_file = root / "demo.log"
    s = _synthetic(root, log_file)
    with logs_to(log_file):
        return _run(root, s, port, wait)


def _run(root: Path, s: dict, port: int, wait: bool) -> str:
    server = ArchiveServer(s["archive_dir"], "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    print(f"demo: request handler serving {s['archive_dir']} at {server.url}", flush=True)
    (root / "s3").mkdir(exist_ok=True)
    with seaweedfs_server(root / "s3") as s3:
        client = s3.client()
        if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
            client.create_bucket(Bucket=BUCKET)
        print(f"demo: S3 store (SeaweedFS) at {s3.endpoint_url}, products in s3://{BUCKET}/regen", flush=True)
        host, rh_port = server.url.split("://", 1)[1].split(":")
        aws = {"conn_type": "aws", "login": s3.access_key, "password": s3.secret_key,
               "extra": {"endpoint_url": s3.endpoint_url, "region_name": s3.region}}
        af = Airflow(root / "airflow", {
            "AIRFLOW_CONN_ALMA_REQUEST_HANDLER": json.dumps({"conn_type": "http", "host": host,
                                                             "port": int(rh_port), "schema": "http"}),
            "AIRFLOW_CONN_ALMA_PRODUCTS_S3": json.dumps(aws), "AIRFLOW_CONN_ALMA_ARCHIVE_S3": json.dumps(aws),
            "ALMA_REGEN_WORKDIR": str(root / "work"), "ALMA_REGEN_PRODUCTS_URL": f"s3://{BUCKET}/regen",
        }, port)
        print(f"demo: starting Airflow standalone (SQLite) on port {port} ...", flush=True)
        try:
            af.start()
            settings_ = settings()
            af.cli("pools", "set", settings_.casa_pool, "2", "CASA processes at once (one per core)")
            af.cli("pools", "set", settings_.staging_pool, "4", "downloads at once")
            af.cli("dags", "unpause", DAG_ID)
            run_id = naming.run_id(s["mous_uid"], datetime.now(timezone.utc))  # named by its MOUS
            af.cli("dags", "trigger", DAG_ID, "--run-id", run_id,
                   "-c", json.dumps({"mous_uid": s["mous_uid"]}))
            print(f"demo: triggered {DAG_ID} for {s['mous_uid']} (run {run_id}); following it:", flush=True)
            state = follow(af, run_id)
            _report(s, state, client, af, root)
            if wait:
                print("demo: the Airflow UI keeps running; press Ctrl-C to stop everything.", flush=True)
                try:
                    af.proc.wait()
                except KeyboardInterrupt:
                    print("\ndemo: stopping")
            return state
        finally:
            af.stop()
            server.shutdown()
            server.server_close()


def _report(s, state, client, af, root):
    mous_f = naming.uid_to_file(s["mous_uid"])
    print()
    print(f"demo: the run ended: {state}")
    try:
        latest = json.loads(client.get_object(Bucket=BUCKET, Key=f"regen/{mous_f}/latest.json")["Body"].read())
        print(f"  products      {latest['manifest'].rsplit('/', 1)[0]}/ (manifest.json, index.html, FITS)")
        print(f"  manifest      {latest['manifest']}")
        print(f"  summary page  http://localhost:{af.port}/alma-regen/products/{mous_f}/{latest['run']}/index.html")
    except Exception:  # noqa: BLE001 - nothing published (a failed run)
        print("  products      none published")
    print(f"  member folder {root / 'work' / naming.member_dir(s['mous_uid'])}")
    print(f"  Airflow UI    http://localhost:{af.port}  (user admin, password {af.password()}; any host name "
          "of this machine works too)")
    print(f"  Reprocessing  http://localhost:{af.port}/plugin/alma-reprocessing")
    print(f"  Airflow logs  {af.home / 'logs'} (each task's log, CASA's output in it)")
    print(f"  demo log      {root / 'demo.log'} (the synthetic delivery's CASA log, the demo's own)")

