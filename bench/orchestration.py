#!/usr/bin/env python
"""What Airflow costs: alma_regenerate on a real Airflow vs the same work by `alma-regen` alone.

    .venv/bin/python bench/orchestration.py [--ebs 2] [--executors local,celery] [--modes cal,full]

On one synthetic delivery (served by serve-archive, products to SeaweedFS):

  baseline (no Airflow): one `alma-regen run` (the same library calls as the DAG's
  tasks, one after the other in one process), each in a fresh workdir:
    cal   alma-regen run MOUS --source URL --workdir W --imaging none   (stage, inspect, calibrate)
    full  alma-regen run MOUS --source URL --workdir W --publish-to s3://...
          (stage, inspect, calibrate, image, fidelity, publish)
  Airflow (api-server, scheduler, dag-processor, triggerer and the executor's
  workers as real processes; the cluster's start is not counted):
    cal   alma_regenerate with imaging=none, publish=false, no products_url
    full  alma_regenerate with the defaults (images, fidelity, publish)
    noop  Airflow alone: 15 tasks one after the other that do nothing (no baseline; its
          time per task is what Airflow itself costs per step on this machine)
    local = LocalExecutor on SQLite; celery = CeleryExecutor with PostgreSQL + Redis
    with the settings of tests/airflow_procs.py (as docker-compose.yaml: the scheduler's
    idle sleep 0.2 s instead of 1 s); --airflow-env KEY=VALUE adds or overrides settings.
  Time = from the trigger (REST) to the run's end (its end_date), and the run's own
  queued -> end. Ratio = Airflow / baseline (goal <= 1.3, issue 15).
  --repeat N alternates baseline and Airflow N times per mode (each round's ratio is
  against its own baseline, so a change of load on this shared machine falls on both);
  --variant NAME:KEY=VALUE,... adds an Airflow run per round with other settings.

Listings: how many times the run asked the archive (serve-archive's DataLink) for the MOUS's
listing, and what one listing costs here (the real DataLink service can take seconds:
--datalink-delay S answers each DataLink request S seconds late).

CPU, beside each time: our CPU-seconds (the `alma-regen run` process and what it reaped;
for Airflow every process of the cluster and what they reaped: tasks, CASA children),
the CASA children's own (the runner logs each child's CPU), and what the rest of the
machine took meanwhile (/proc/stat less ours: other people's work on a shared machine),
and the idle cluster's CPU (10 s before the trigger). Each task's life (task_life) is
printed per run.

Then DAG parse cost per file of dags/: a fresh interpreter's import of the file
with airflow.sdk already imported (what the DAG processor pays per parse), the
cold import (with Airflow itself), and DagBag(file) timing.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))
sys.path.insert(0, str(ROOT / "tests"))
from airflow_procs import (AirflowCluster, postgres_problem, redis_problem, scratch_postgres_db,  # noqa: E402
                           scratch_redis_db)
from fixtures_servers import seaweedfs_server  # noqa: E402

from alma_regen_dev.serve_archive import ArchiveServer  # noqa: E402
from alma_regen_dev.synth import synthesize  # noqa: E402

BIN = Path(sys.executable).parent
GOAL = 1.3  # issue 15: the full chain on Airflow within 1.3 x `alma-regen run`, measured in the same run
HZ = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU-seconds the whole machine has been busy since boot (/proc/stat: all but idle and iowait)."""
    f = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in f[:8])
    return (user + nice + system + irq + softirq + steal) / HZ


def tree_cpu(roots) -> dict:
    """CPU-seconds of the live processes under `roots` (pids) and of every descendant they reaped
    (utime + stime + cutime + cstime): a task process, its CASA child and the child's bwrap are
    counted once each has been waited for, as the LocalExecutor's workers and the runner do.
    By kind of process: the workers' own time is the Task SDK's supervisor (log forwarding, the
    Execution API calls, heartbeats), what they reaped is the task processes (and their CASA)."""
    table, kids = {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()[:200].replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2:].split()
        table[int(d.name)] = (sum(int(x) for x in f[11:13]), sum(int(x) for x in f[13:15]), cmd)
        kids.setdefault(int(f[1]), []).append(int(d.name))
    out, todo = {}, list(roots)
    while todo:
        pid = todo.pop()
        if pid not in table:
            continue
        own, reaped, cmd = table[pid]
        if pid not in roots and any(w in cmd for w in ("LocalExecutor", "worker --", "celeryd", "ForkPoolWorker")):
            out["supervisors"] = out.get("supervisors", 0) + own
            out["task processes"] = out.get("task processes", 0) + reaped
        else:
            kind = next((k for k in ("serve-logs", "api-server", "scheduler", "dag-processor", "triggerer", "celery")
                         if k in cmd.replace("api_server", "api-server")), "other")
            out[kind] = out.get(kind, 0) + own + reaped
        todo += kids.get(pid, [])
    return {k: v / HZ for k, v in out.items()}


def tree_cpu_s(roots) -> float:
    return sum(tree_cpu(roots).values())


class CpuMeter:
    """Our CPU-seconds (a process tree, or this process's reaped children) against the machine's over
    the same wall time: what the others on this shared machine took is the difference."""

    def __init__(self, roots=None):
        self.roots = roots
        self.t0, self.m0, self.o0 = time.monotonic(), machine_busy_s(), self._ours()

    def _ours(self) -> dict:
        if self.roots is not None:
            return tree_cpu(self.roots)
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {"alma-regen": r.ru_utime + r.ru_stime}

    def stop(self) -> dict:
        wall, machine, now = time.monotonic() - self.t0, machine_busy_s() - self.m0, self._ours()
        by_kind = {k: round(v - self.o0.get(k, 0.0), 2) for k, v in now.items()}
        ours = sum(by_kind.values())
        return {"cpu_s": round(ours, 1), "others_cpu_s": round(max(machine - ours, 0.0), 1),
                "others_cores": round(max(machine - ours, 0.0) / wall, 2) if wall else None,
                "cpu_by_process_s": by_kind}


CASA_CPU = re.compile(r"CASA finished in ([0-9.]+) s, CPU ([0-9.]+) s")


def listings_asked(server) -> int:
    """DataLink requests serve-archive has answered so far (its record of every request's path):
    the archive listings the runs asked for. The real DataLink service can take seconds per answer."""
    with server.lock:
        return sum(1 for h in server.counters.headers if h[0].startswith("/datalink/sync"))


ACCESS = re.compile(r"duration_us=(\d+) .*method=(\w+) path=(/execution/\S*)")


def execution_api_calls(api_log: Path) -> dict:
    """The Task Execution API requests the api-server answered (its access log): in all, and the
    Variable and Connection reads (each a round trip from a task process through its supervisor),
    with the server's own time for them. The cluster is idle before the trigger: these are the run's."""
    out = {"requests": 0, "variables": 0, "variables_server_ms": 0.0, "connections": 0}
    try:
        text = api_log.read_text(errors="replace")
    except OSError:
        return out
    for m in ACCESS.finditer(text):
        out["requests"] += 1
        if m.group(3).startswith("/execution/variables/"):
            out["variables"] += 1
            out["variables_server_ms"] += int(m.group(1)) / 1000
        elif m.group(3).startswith("/execution/connections/"):
            out["connections"] += 1
    out["variables_server_ms"] = round(out["variables_server_ms"], 1)
    return out


def slow_datalink(delay_s: float) -> None:
    """serve-archive's DataLink answers, each `delay_s` late (--datalink-delay): a stand-in for the
    real service's latency, which cannot be had here. Only the DataLink route; files are served as
    fast as before."""
    from alma_regen_dev import serve_archive
    answer = serve_archive._Handler._datalink

    def late(self, mous, head):
        time.sleep(delay_s)
        return answer(self, mous, head)
    serve_archive._Handler._datalink = late


def listing_cost_s(url: str, mous: str, n: int = 5) -> float:
    """The median time of one listing of the MOUS from serve-archive (request + VOTable parse +
    sorting): what each listing a run asks for costs here, besides the request's own wait."""
    from alma_regen.staging import list_mous, open_source
    times = []
    for _ in range(n):
        t = time.perf_counter()
        list_mous(open_source(url), mous)
        times.append(time.perf_counter() - t)
    return round(sorted(times)[n // 2], 4)


def synthetic_delivery(folder: Path, ebs: int) -> dict:
    """The synthetic delivery (seed 1: the same bytes each time), made in `folder` or reused from it."""
    stamp = folder / "synth.json"
    if stamp.is_file():
        synth = json.loads(stamp.read_text())
        if len(synth["ebs"]) == ebs and Path(synth["archive_dir"]).is_dir():
            return synth
    synth = synthesize(folder, ebs=ebs, seed=1)
    stamp.write_text(json.dumps(synth, default=str))
    return synth


def baseline(mode: str, synth: dict, url: str, root: Path, s3, bucket: str, tag: str = "") -> dict:
    """`alma-regen run`: the same library calls as the DAG's tasks, one after the other, no Airflow."""
    if mode == "noop":  # nothing to do without Airflow
        return {"wall_s": 0.0, "steps_s": None, "cpu_s": 0.0, "others_cpu_s": 0.0, "others_cores": 0.0,
                "cpu_by_process_s": {}, "casa_children": 0, "casa_cpu_s": 0.0}
    work = root / f"cli-{mode}{tag}"
    shutil.rmtree(work, ignore_errors=True)
    env = dict(os.environ, **s3.env())
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # our bytecode cached, as for the clusters (tests/airflow_procs.py)
    cmd = [BIN / "alma-regen", "run", synth["mous_uid"], "--source", url, "--workdir", work]
    if mode == "full":  # stage, inspect, calibrate, image, fidelity, publish
        cmd += ["--publish-to", f"s3://{bucket}/cli-{mode}{tag}"]
    else:  # stage, inspect, calibrate
        cmd += ["--imaging", "none"]
    meter = CpuMeter()
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    cpu = meter.stop()
    if r.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    try:
        steps = json.loads(r.stdout).get("timings_s")
    except ValueError:
        steps = None
    casa = [float(m.group(2)) for m in CASA_CPU.finditer(r.stderr)]
    return {"wall_s": round(wall, 2), "steps_s": steps, **cpu, "casa_children": len(casa),
            "casa_cpu_s": round(sum(casa), 1)}


def airflow_run(executor: str, mode: str, synth: dict, url: str, root: Path, s3, bucket: str,
                extra_env: dict | None = None, tag: str = "") -> dict:
    host, port = url.split("://", 1)[1].rstrip("/").split(":")
    name = f"af-{executor}-{mode}{tag}"  # a fresh workdir and products prefix for each run
    env = {**(extra_env or {}),
        "ALMA_REGEN_WORKDIR": root / name / "work",
        "ALMA_REGEN_PRODUCTS_URL": f"s3://{bucket}/{name}" if mode == "full" else "",
        "AIRFLOW_CONN_ALMA_REQUEST_HANDLER": json.dumps(
            {"conn_type": "http", "host": host, "port": int(port), "schema": "http"}),
        "AIRFLOW_CONN_ALMA_PRODUCTS_S3": json.dumps(
            {"conn_type": "aws", "login": s3.access_key, "password": s3.secret_key,
             "extra": {"endpoint_url": s3.endpoint_url, "region_name": s3.region}}),
    }
    conf = {"mous_uid": synth["mous_uid"]}
    if mode == "cal":
        conf.update(imaging="none", publish=False)
    dag_id = "alma_regenerate"
    if mode == "noop":  # Airflow alone: a chain of tasks that do nothing, in a DAG folder of its own
        dag_id, conf = NOOP_DAG_ID, {}
        folder = root / name / "dags"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "bench_noop.py").write_text(NOOP_DAG)
        env["AIRFLOW__CORE__DAGS_FOLDER"] = folder

    def go(cluster):
        t = time.monotonic()
        cluster.migrate()
        cluster.start_all(celery_queues="default,casa")
        cluster.wait_ready()
        for name in ("casa", "alma_staging"):
            cluster.api("POST", "/pools", {"name": name, "slots": 2, "description": "bench"})
        cluster.wait_dag(dag_id)
        startup = time.monotonic() - t
        roots = [p.pid for p in cluster.procs.values()]
        time.sleep(3)  # the DAG's first parse and the pools settle
        idle = CpuMeter(roots)
        time.sleep(IDLE_S)
        idle = idle.stop()
        meter = CpuMeter(roots)
        t0 = time.time()
        run_id = cluster.trigger(dag_id, conf)
        end_poll = time.monotonic() + 1800
        # Polled every POLL_S: each poll is a request the api-server serves (about 20 ms of its
        # CPU here: at 4 a second they were a quarter of the run's Airflow CPU). The end is the
        # run's own end_date, not when a poll saw it.
        while time.monotonic() < end_poll:
            state = cluster.run_state(dag_id, run_id)
            if state in ("success", "failed"):
                break
            time.sleep(POLL_S)
        cpu = meter.stop()
        run = cluster.api("GET", f"/dags/{dag_id}/dagRuns/{_q(run_id)}")
        wall = _ts(run["end_date"]) - t0
        if state != "success":
            raise RuntimeError(f"run {state}:\n{cluster.failure_report(dag_id, run_id)}")
        tis = cluster.api("GET", f"/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances?limit=500")["task_instances"]
        life = task_life(tis, Path(cluster.home) / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}")
        busy = sum(t["duration"] or 0 for t in tis)
        per_task = {}
        for t in tis:
            per_task[t["task_id"]] = round(per_task.get(t["task_id"], 0) + (t["duration"] or 0), 2)
        from datetime import datetime
        q, e = (datetime.fromisoformat(run[k].replace("Z", "+00:00")) for k in ("queued_at", "end_date"))
        # The run's own edges: queued -> its first task scheduled, its last task's end -> the run's end.
        first = min(_ts(t["scheduled_when"]) for t in tis if t.get("scheduled_when"))
        last = max(_ts(t["end_date"]) for t in tis if t.get("end_date"))
        life["run_start_s"] = round(first - q.timestamp(), 3)
        life["run_end_s"] = round(e.timestamp() - last, 3)
        casa_cpu = sum(c.get("cpu_s") or 0 for r in life["tasks"] for c in r.pop("_casa"))
        api = execution_api_calls(Path(cluster.home) / "proc-logs" / "api-server.log")
        return {"wall_s": round(wall, 2), "queued_to_end_s": round((e - q).total_seconds(), 2),
                "tasks": len(tis), "task_seconds_sum": round(busy, 2), "task_s": per_task,
                "cluster_start_s": round(startup, 1), **cpu, "casa_children": life["sum"]["casa_children"],
                "casa_cpu_s": round(casa_cpu, 1), "idle_cores": round(idle["cpu_s"] / IDLE_S, 3),
                "execution_api": api, "life": life}

    home = root / name / "airflow"
    if executor == "celery":
        with scratch_redis_db() as n, scratch_postgres_db("alma_regen_bench") as (db_url, _):
            with AirflowCluster(home, db_url=db_url, executor="CeleryExecutor",
                                broker_url=f"redis://127.0.0.1:6379/{n}", env=env) as c:
                return go(c)
    with AirflowCluster(home, executor="LocalExecutor", env=env) as c:
        return go(c)


NOOP_DAG_ID = "bench_noop"
NOOP_TASKS = 15  # as many as alma_regenerate runs one after the other
NOOP_DAG = f'''"""bench/orchestration.py: {NOOP_TASKS} tasks one after the other that do nothing."""
from airflow.sdk import DAG, BaseOperator, chain


class Noop(BaseOperator):
    def execute(self, context):
        return None


with DAG(dag_id="{NOOP_DAG_ID}", schedule=None, catchup=False):
    chain(*[Noop(task_id=f"t{{i:02d}}") for i in range({NOOP_TASKS})])
'''
IDLE_S = 10  # how long the cluster's idle CPU is measured before the trigger
POLL_S = 2.0  # how often the run's state is asked for


def _ts(v):
    from datetime import datetime
    return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() if v else None


def _log_marks(path: Path) -> dict:
    """The moments of one task's life its log shows (epoch seconds): the task runner's first line,
    the DAG bundle ready (after the supervisor's `run` call and the listeners' on_starting), the
    DAG file parsed, execute() entered and left, and each CASA child: launched, first output
    (its imports done), finished."""
    m = {"casa": []}
    pre_seen = False
    for line in path.read_text(errors="replace").splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        t, ev = _ts(d.get("timestamp")), str(d.get("event", ""))
        if t is None:
            continue
        m.setdefault("first", t)
        m["last"] = t
        if ev == "::group::Pre Execute":
            pre_seen = True
        elif ev.startswith("DAG bundles loaded"):
            m["bundle"] = t
        elif ev == "Worker startup parse complete":
            m["parsed"], m["parse_ms"] = t, d.get("dag_file_parse_ms")
        elif ev == "::endgroup::" and pre_seen and "execute" not in m:
            m["execute"] = t
        elif ev == "::group::Post Execute":
            m["post"] = t
        elif ev.startswith("CASA: ") and " (in " in ev:  # the runner's command line, not "CASA: limit ..."
            m["casa"].append({"launched": t})
        elif ev.startswith("CASA finished in") and m["casa"]:
            m["casa"][-1]["finished"] = t
            cpu = CASA_CPU.match(ev)
            m["casa"][-1]["cpu_s"] = float(cpu.group(2)) if cpu else None
        elif d.get("filename") == "runner.py" and m["casa"] and "first_output" not in m["casa"][-1]:
            m["casa"][-1]["first_output"] = t
    return m


def task_life(tis: list, logs: Path) -> dict:
    """Where the time of each task instance of a run goes, from the metadata DB (scheduled,
    queued, started, ended, through the REST API) and the task's own log:

      scheduler   upstream's end -> scheduled (the scheduler's loop sees the upstream done)
      queue       scheduled -> queued (pool and executor slots checked, handed to the executor)
      worker      queued -> started (the executor's sync, the worker forks the supervisor's task
                  process, the supervisor's `run` call to the Execution API)
      sdk_start   started -> DAG bundle ready (StartupDetails, the listeners' on_starting)
      parse       the DAG file parsed in the task process (our operators imported)
      pre         parsed -> execute() (templates rendered, RTIF sent, listeners' on_running)
      execute     execute() itself; of it, per CASA child: casa_start (launch -> first output:
                  sandbox + casatools/casatasks import) and casa_work (first output -> finished)
      post        execute() left -> ended (XCom push, listeners, the state call)

    `tis`: the run's task instances as the REST API gives them; `logs`: the run's log folder.
    """
    rows = []
    ran = [t for t in tis if t.get("queued_when") and t.get("end_date")]
    ends = sorted(_ts(t["end_date"]) for t in ran)
    for t in sorted(ran, key=lambda t: _ts(t["start_date"])):
        sched, queued, start, end = (_ts(t.get(k)) for k in ("scheduled_when", "queued_when", "start_date",
                                                               "end_date"))
        folder = logs / f"task_id={t['task_id']}"
        if t["map_index"] >= 0:
            folder = folder / f"map_index={t['map_index']}"
        f = folder / f"attempt={t['try_number'] or 1}.log"
        m = _log_marks(f) if f.is_file() else {"casa": []}
        before = [e for e in ends if e <= (sched or queued)]
        row = {"task": t["task_id"] + (f"[{t['map_index']}]" if t["map_index"] >= 0 else ""),
               "scheduler": (sched or queued) - before[-1] if before else None,
               "queue": queued - sched if sched else None, "worker": start - queued,
               "sdk_start": m.get("bundle", start) - start if "bundle" in m else None,
               "parse": m["parsed"] - m["bundle"] if "parsed" in m and "bundle" in m else None,
               "pre": m["execute"] - m["parsed"] if "execute" in m and "parsed" in m else None,
               "execute": m["post"] - m["execute"] if "post" in m and "execute" in m else None,
               "post": end - m["post"] if "post" in m else None,
               "total": end - start, "casa_children": len(m["casa"]),
               "casa_start": sum(c["first_output"] - c["launched"] for c in m["casa"] if "first_output" in c),
               "casa_work": sum(c["finished"] - c["first_output"] for c in m["casa"]
                                if "finished" in c and "first_output" in c)}
        row = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
        row["_casa"] = m["casa"]
        rows.append(row)
    return {"tasks": rows, "sum": {k: round(sum(r[k] or 0 for r in rows), 2) for k in
                                   ("scheduler", "queue", "worker", "sdk_start", "parse", "pre", "execute",
                                    "post", "casa_start", "casa_work", "casa_children")}}


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _q(s: str) -> str:
    from urllib.parse import quote
    return quote(s, safe="")


def print_life(name: str, life: dict):
    cols = ("scheduler", "queue", "worker", "sdk_start", "parse", "pre", "execute", "post", "total",
            "casa_children", "casa_start", "casa_work")
    print(f"\nthe life of each task of {name} (seconds; see task_life)")
    print(f"  {'task':<22}" + "".join(f"{c[:9]:>10}" for c in cols))
    for r in life["tasks"]:
        print(f"  {r['task']:<22}" + "".join(f"{'' if r[c] is None else r[c]:>10}" for c in cols))
    print(f"  {'sum':<22}" + "".join(f"{life['sum'].get(c, ''):>10}" for c in cols))
    print(f"  the run: queued -> its first task scheduled {life.get('run_start_s')} s; its last task's end "
          f"-> the run's end {life.get('run_end_s')} s", flush=True)


PARSE = r"""
import json, sys, time, runpy, os
t0 = time.perf_counter()
import airflow.sdk  # noqa
t1 = time.perf_counter()
runpy.run_path(sys.argv[1], run_name="dagfile")
t2 = time.perf_counter()
runpy.run_path(sys.argv[1], run_name="dagfile2")  # a re-parse with every module cached
t3 = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
t4 = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1], bundle_path=os.path.dirname(sys.argv[1]))
t5 = time.perf_counter()
print(json.dumps({"airflow_sdk_import_s": t1 - t0, "first_parse_s": t2 - t1, "reparse_s": t3 - t2,
                  "dagbag_s": t5 - t4, "dags": sorted(bag.dag_ids), "errors": bag.import_errors}))
"""


def parse_times(repeat: int = 3) -> dict:
    out = {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=tempfile.mkdtemp(prefix="bench-parse-"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"))
    for f in sorted((ROOT / "dags").glob("*.py")):
        runs = []
        for _ in range(repeat):
            r = subprocess.run([sys.executable, "-c", PARSE, str(f)], env=env, capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(r.stderr[-3000:])
            runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
        best = {k: round(min(x[k] for x in runs), 4) for k in runs[0] if k.endswith("_s")}
        best.update(dags=runs[0]["dags"], errors=runs[0]["errors"])
        # The slowest imports of the file itself (python -X importtime), after what every DAG
        # file shares (airflow.sdk's DAG, BaseOperator, Param, ... already loaded).
        r = subprocess.run([sys.executable, "-X", "importtime", "-c",
                            "import sys, runpy\nfrom airflow.sdk import DAG, BaseOperator, Param, Asset, "
                            "DeadlineAlert, AsyncCallback\nsys.stderr.write('@@MARK@@\\n'); sys.stderr.flush()\n"
                            f"runpy.run_path({str(f)!r})"],
                           env=env, capture_output=True, text=True)
        after = r.stderr.split("@@MARK@@", 1)[-1]
        rows = []
        for ln in after.splitlines():
            if not ln.startswith("import time:") or "|" not in ln:
                continue
            parts = ln[len("import time:"):].split("|")
            name = parts[2].rstrip()
            if parts[1].strip().isdigit() and not name.startswith("  "):  # top-level: cumulative
                rows.append((int(parts[1]), name.strip()))
        top = sorted(rows, reverse=True)[:6]
        best["slowest_imports_after_sdk_ms"] = {name: round(us / 1000, 1) for us, name in top}
        out[f.name] = best
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ebs", type=int, default=2)
    ap.add_argument("--executors", default="local,celery")
    ap.add_argument("--modes", default="cal,full")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                    help="one more Airflow run per round with these settings on top, e.g. "
                         "hb1:AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL=1")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of (baseline, Airflow) per mode")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--synth-cache", metavar="DIR",
                    help="make the synthetic delivery there once and reuse it in later runs (same --ebs, seed 1)")
    ap.add_argument("--datalink-delay", type=float, default=0.0, metavar="S",
                    help="serve-archive answers each DataLink request S seconds late: the real ALMA "
                         "DataLink service can take seconds per listing, the local one takes milliseconds")
    ap.add_argument("--parse-only", action="store_true")
    ap.add_argument("--no-parse", action="store_true", help="leave out the DAG parse timings")
    ap.add_argument("--airflow-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra Airflow settings for the clusters, e.g. "
                         "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME=0.2")
    a = ap.parse_args(argv)
    results = {"parse": {} if a.no_parse else parse_times()}
    print(json.dumps({"parse": results["parse"]}, indent=1), flush=True)
    if a.parse_only:
        return 0
    executors = [x for x in a.executors.split(",") if x]
    if "celery" in executors and (postgres_problem() or redis_problem()):
        print(f"celery skipped: {postgres_problem() or redis_problem()}", flush=True)
        executors.remove("celery")
    # Each executor as configured, then once more per --variant (its settings on top).
    common = dict(kv.split("=", 1) for kv in a.airflow_env)
    arms = []
    for ex in executors:
        arms.append((ex, ex, common))
        for v in a.variant:
            name, _, kvs = v.partition(":")
            arms.append((f"{ex}+{name}", ex, {**common, **dict(kv.split("=", 1) for kv in kvs.split(",") if kv)}))
    root = Path(tempfile.mkdtemp(prefix="bench-orch-"))
    try:
        synth = synthetic_delivery(Path(a.synth_cache) if a.synth_cache else root / "synth", a.ebs)
        if a.datalink_delay > 0:
            slow_datalink(a.datalink_delay)
        server = ArchiveServer(synth["archive_dir"], "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        results["listing_cost_s"] = listing_cost_s(server.url, synth["mous_uid"])
        print(f"one listing of the MOUS from serve-archive: {results['listing_cost_s'] * 1000:.1f} ms "
              f"(median of 5)", flush=True)
        (root / "s3").mkdir()
        with seaweedfs_server(root / "s3") as s3:
            bucket = s3.bucket("bench")
            for mode in a.modes.split(","):
                # Rounds alternate the baseline and Airflow, so that a change of load on this shared
                # machine falls on both; each round's ratio is against its own baseline.
                for i in range(a.repeat):
                    tag = f"-{i + 1}" if a.repeat > 1 else ""
                    asked = listings_asked(server)
                    base = baseline(mode, synth, server.url, root, s3, bucket, tag)
                    base["listings"] = listings_asked(server) - asked
                    results.setdefault(f"baseline-{mode}", []).append(base)
                    print(f"baseline {mode}{tag} (load {_load()}): {base}", flush=True)
                    for arm, ex, env in arms:
                        asked = listings_asked(server)
                        r = airflow_run(ex, mode, synth, server.url, root, s3, bucket, env,
                                        tag + (f"-{arm.split('+', 1)[1]}" if "+" in arm else ""))
                        r["listings"] = listings_asked(server) - asked
                        if mode == "noop":  # no baseline: the figure is Airflow's own cost per task
                            r["ratio_wall"] = r["ratio_queued_to_end"] = 0.0
                            r["per_task_s"] = round(r["wall_s"] / NOOP_TASKS, 3)
                        else:
                            r["ratio_wall"] = round(r["wall_s"] / base["wall_s"], 3)
                            r["ratio_queued_to_end"] = round(r["queued_to_end_s"] / base["wall_s"], 3)
                        results.setdefault(f"airflow-{arm}-{mode}", []).append(r)
                        print(f"airflow {arm} {mode}{tag} (load {_load()}): "
                              f"{ {k: v for k, v in r.items() if k != 'life'} }", flush=True)
                        print_life(f"{arm} {mode}{tag}", r["life"])
        server.shutdown()
        server.server_close()
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nsummary (seconds; ratio = Airflow / alma-regen alone, goal <= {GOAL})")
    print("  (cpu: our CPU-seconds, CASA's of them; others: what the rest of this shared machine took meanwhile)")
    for mode in a.modes.split(","):
        for i, b in enumerate(results.get(f"baseline-{mode}") or []):
            print(f"  {mode:<5} round {i + 1} alma-regen alone       {b['wall_s']:8.1f}          "
                  f"cpu {b['cpu_s']:.1f} (CASA {b['casa_cpu_s']:.1f} in {b['casa_children']} children), "
                  f"others {b['others_cores']:.2f} cores; {b.get('listings', '?')} listings")
            for ex, _, _ in arms:
                runs = results.get(f"airflow-{ex}-{mode}") or []
                if i < len(runs):
                    r = runs[i]
                    per = (f"{r['per_task_s']:.2f} s per task" if "per_task_s" in r else f"x{r['ratio_wall']:.2f}")
                    print(f"  {mode:<5} round {i + 1} Airflow {ex:<7} trigger->end {r['wall_s']:8.1f}  "
                          f"{per}  cpu {r['cpu_s']:.1f} (CASA {r['casa_cpu_s']:.1f} in "
                          f"{r['casa_children']} children), others {r['others_cores']:.2f} cores; "
                          f"{r['tasks']} tasks, {r['task_seconds_sum']:.1f} task-seconds; idle cluster "
                          f"{r['idle_cores']:.3f} cores; {r.get('listings', '?')} listings of the MOUS "
                          f"(x {results.get('listing_cost_s', 0) * 1000:.0f} ms here)")
                    api = r.get("execution_api") or {}
                    print(f"  {'':<5}         Task Execution API: {api.get('requests')} requests, of them "
                          f"{api.get('variables')} Variable reads ({api.get('variables_server_ms')} ms of the "
                          f"api-server's time) and {api.get('connections')} Connection reads")
                    print(f"  {'':<5}         Airflow's CPU by process: " + ", ".join(
                        f"{k} {v:.1f}" for k, v in sorted(r["cpu_by_process_s"].items(), key=lambda kv: -kv[1]))
                          + f" (task processes include CASA's {r['casa_cpu_s']:.1f})")
        for ex, _, _ in arms:
            ratios = sorted(r["ratio_wall"] for r in results.get(f"airflow-{ex}-{mode}") or [])
            if len(ratios) > 1 and mode != "noop":
                print(f"  {mode:<5} Airflow {ex}: median ratio x{ratios[len(ratios) // 2]:.2f} over "
                      f"{len(ratios)} rounds ({', '.join(f'{x:.2f}' for x in ratios)})")
    for f, p in results["parse"].items():
        print(f"  parse {f}: {p['first_parse_s'] * 1000:.0f} ms (airflow.sdk preloaded), re-parse "
              f"{p['reparse_s'] * 1000:.1f} ms, DagBag {p['dagbag_s'] * 1000:.0f} ms, cold import of "
              f"airflow.sdk {p['airflow_sdk_import_s'] * 1000:.0f} ms")
    print(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
