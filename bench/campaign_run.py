#!/usr/bin/env python
"""A real bulk campaign: alma_bulk_reprocess feeding alma_regenerate on LocalExecutor with real CASA,
under a disk budget, with cleanup after publish and the campaign view.

    .venv/bin/python bench/campaign_run.py [--mous 12] [--dir .bench-campaign] [--fit 2.5]
                                           [--feeder schedule|trigger] [--json PATH]

1. Synthetic deliveries (real CASA), one per seed, EBs alternating 1 and 2; made once under
   DIR/synth/seed-N/ and reused on a second run (as `make demo` does). Their archive files go,
   hard-linked, into one folder, DIR/archive/, served by one ArchiveServer (serve_archive tells
   the MOUSs of one folder apart by the ASDM tars' first members).
2. The disk budget from the real footprints: admission.footprint(the archive's DataLink listing
   of each MOUS, footprint_factor) for each MOUS; budget = --fit x their mean (at least the
   largest, so none is too large), or --budget-gb. Printed.
3. SeaweedFS for the products, and an AirflowCluster (tests/airflow_procs: api-server,
   scheduler, dag-processor, triggerer; LocalExecutor, SQLite) with the settings
   ALMA_REGEN_BULK_WORKLIST (the N uids), ALMA_REGEN_BULK_DISK_BUDGET_GB, ALMA_REGEN_WORKSPACE_KEEP=
   nothing, ALMA_REGEN_PRODUCTS_URL, ALMA_REGEN_BULK_MAX_IN_FLIGHT and the feeder's pace:
     schedule (default)  ALMA_REGEN_BULK_SCHEDULE="* * * * *": the product's own schedule, a
                         pass every minute (alma_bulk_reprocess's cron; max_active_runs=1)
     trigger             no schedule; the bench POSTs a run of alma_bulk_reprocess every
                         --trigger-every s (30) while work remains and no pass is in flight
   Every DAG param is left at its default (calibration/imaging auto, publish on, keep=setting).
4. Every second until the campaign API says complete and no run is queued or running: bytes on
   disk of the member folders under the workdir (allocated blocks, symlinks not followed, a
   hard link once), bytes reserved in the ledger (admission.reserved), alma_regenerate runs
   queued/running (REST).
5. At the end: per-MOUS outcome, feeder passes, deferrals (each pass's plan summary XCom),
   cleanups (each publish's XCom `workspace`), peak disk and peak reservation vs the budget,
   wall times, the runs' summed durations, utilisation, the workdir at the end.
   --json PATH writes these figures (with the 1 s samples).

Everything the bench starts runs at --nice (10): the machine may be shared. The run's state
(Airflow home, workdir, S3) is made afresh under DIR/run/ each time; the deliveries are kept.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))
sys.path.insert(0, str(ROOT / "tests"))
from airflow_procs import AirflowCluster  # noqa: E402
from fixtures_servers import seaweedfs_server  # noqa: E402

from alma_regen import admission  # noqa: E402
from alma_regen.config import Settings  # noqa: E402
from alma_regen.staging.sources import open_source  # noqa: E402
from alma_regen.staging.stage import list_mous  # noqa: E402
from alma_regen_dev.demo import logs_to  # noqa: E402
from alma_regen_dev.serve_archive import ArchiveServer  # noqa: E402
from alma_regen_dev.synth import synthesize  # noqa: E402

REGEN, BULK = "alma_regenerate", "alma_bulk_reprocess"
MB, GB = 1e6, 1e9


def q(s: str) -> str:
    return quote(s, safe="")


def ts(v) -> datetime | None:
    return datetime.fromisoformat(v.replace("Z", "+00:00")) if v else None


# ------------------------------------------------------------------ deliveries
def deliveries(root: Path, n: int, seed_base: int) -> list:
    """n synthetic deliveries, EBs alternating 1, 2; each made once and reused while complete."""
    out = []
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        seed, ebs = seed_base + i, 1 + i % 2
        d = root / "synth" / f"seed-{seed}"
        record = d / "synth.json"
        s = None
        if record.is_file():
            s = json.loads(record.read_text())
            if not (s.get("ebs_asked") == ebs and all((Path(s["archive_dir"]) / f["name"]).is_file()
                                                       for f in s["files"])):
                s = None
        if s is None:
            t0 = time.monotonic()
            print(f"synth: seed {seed}, {ebs} EB(s) (real CASA) ...", end=" ", flush=True)
            with logs_to(root / "synth.log"):  # CASA's output: not the terminal
                s = synthesize(d, ebs=ebs, seed=seed)
            s["ebs_asked"] = ebs
            record.write_text(json.dumps(s, indent=1))
            print(f"{s['mous_uid']} in {time.monotonic() - t0:.0f} s", flush=True)
        else:
            print(f"synth: reusing seed {seed}: {s['mous_uid']} ({len(s['ebs'])} EB)", flush=True)
        out.append(s)
    return out


def one_archive(root: Path, synths: list) -> Path:
    """Every delivery's archive files in one folder (hard links; a copy across devices)."""
    archive = root / "archive"
    shutil.rmtree(archive, ignore_errors=True)
    archive.mkdir(parents=True)
    for s in synths:
        for f in s["files"]:
            src, dst = Path(s["archive_dir"]) / f["name"], archive / f["name"]
            if dst.exists():
                raise RuntimeError(f"two deliveries have a file named {f['name']}")
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
    return archive


def code_state() -> dict:
    """The commit and the uncommitted changes of plugins/ and dags/ the runs use (editable install)."""
    def git(*args):
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""
    return {"commit": git("rev-parse", "HEAD"),
            "local_changes": git("status", "--porcelain", "--", "plugins", "dags").splitlines()}


# ------------------------------------------------------------------ measuring
def member_usage(workdir: Path) -> tuple[int, int]:
    """(bytes of the member folders, how many there are)."""
    try:
        members = [p for p in workdir.iterdir() if p.name.startswith("member.") and not p.is_symlink()]
    except FileNotFoundError:
        return 0, 0
    return sum(admission.usage(p) for p in members), len(members)


def runs_of(cluster, dag_id: str, states=()) -> list:
    qs = "".join(f"&state={s}" for s in states)
    out, offset = [], 0
    while True:
        r = cluster.api("GET", f"/dags/{dag_id}/dagRuns?limit=100&offset={offset}&order_by=run_after{qs}")
        out += r["dag_runs"]
        offset += len(r["dag_runs"])
        if not r["dag_runs"] or offset >= r["total_entries"]:
            return out


def xcom(cluster, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1):
    try:
        r = cluster.api("GET", f"/dags/{dag_id}/dagRuns/{q(run_id)}/taskInstances/{task_id}/xcomEntries/{key}"
                               f"?map_index={map_index}&deserialize=true&stringify=false")
    except RuntimeError:
        return None  # no such XCom (a skipped task, a failed run)
    v = r.get("value") if isinstance(r, dict) else None
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            pass
    return v


def campaign_api(cluster):
    status, body = cluster.get("/alma-regen/api/campaign")
    if status != 200:
        return {"_error": f"HTTP {status}: {body[:300]!r}"}
    return json.loads(body)


# ------------------------------------------------------------------ the run
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mous", type=int, default=12, help="how many MOUSs in the worklist (default 12)")
    ap.add_argument("--dir", default=".bench-campaign", help="deliveries (kept) and the run's state")
    ap.add_argument("--seed-base", type=int, default=100, help="seeds seed-base .. seed-base+mous-1")
    ap.add_argument("--fit", type=float, default=2.5, help="the budget in mean footprints (default 2.5)")
    ap.add_argument("--budget-gb", type=float, default=0.0, help="the budget itself (overrides --fit)")
    ap.add_argument("--factor", type=float, default=Settings().footprint_factor, help="footprint_factor")
    ap.add_argument("--max-in-flight", type=int, default=4)
    ap.add_argument("--feeder", choices=("schedule", "trigger"), default="schedule")
    ap.add_argument("--trigger-every", type=float, default=30.0)
    ap.add_argument("--casa-slots", type=int, default=2, help="the casa pool (CASA processes at once)")
    ap.add_argument("--staging-slots", type=int, default=2, help="the alma_staging pool")
    ap.add_argument("--parallelism", type=int, default=6, help="AIRFLOW__CORE__PARALLELISM (task processes)")
    ap.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds of campaign")
    ap.add_argument("--nice", type=int, default=10, help="niceness of everything the bench starts")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args(argv)
    if a.nice:
        os.nice(a.nice)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops what we started
    root = Path(a.dir).resolve()
    t_bench = time.monotonic()
    code = code_state()
    if code["local_changes"]:
        print(f"note: the product code has local changes (the runs use them): {' '.join(code['local_changes'])}")

    synths = deliveries(root, a.mous, a.seed_base)
    mouss = [s["mous_uid"] for s in synths]
    if len(set(mouss)) != len(mouss):
        raise SystemExit(f"two seeds gave the same MOUS: {mouss}")
    archive = one_archive(root, synths)
    run = root / "run"
    shutil.rmtree(run, ignore_errors=True)
    workdir, home = run / "work", run / "airflow"
    (run / "s3").mkdir(parents=True)
    worklist = run / "worklist.txt"
    worklist.write_text("# bench/campaign_run.py\n" + "\n".join(mouss) + "\n")

    server = ArchiveServer(str(archive), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        # The footprints as the feeder computes them: the archive's listing of each MOUS.
        source = open_source(server.url)
        fps = {}
        for s in synths:
            files = {f.name: f.size for f in list_mous(source, s["mous_uid"]).all_files()}
            fps[s["mous_uid"]] = {"ebs": len(s["ebs"]), "archive_bytes": sum(files.values()),
                                  "raw_bytes": sum(v for k, v in files.items() if k.endswith(admission.ASDM_SUFFIX)),
                                  "footprint": admission.footprint(files, a.factor)}
        mean_fp = statistics.mean(f["footprint"] for f in fps.values())
        max_fp = max(f["footprint"] for f in fps.values())
        budget = int(a.budget_gb * GB) if a.budget_gb > 0 else max(int(a.fit * mean_fp), max_fp)
        print(f"\n{len(mouss)} MOUSs served from {archive} at {server.url}")
        for m, f in fps.items():
            print(f"  {m}  {f['ebs']} EB  archive {f['archive_bytes'] / MB:6.2f} MB  raw {f['raw_bytes'] / MB:6.2f} MB"
                  f"  footprint {f['footprint'] / MB:7.2f} MB (x{a.factor:g} raw + rest)")
        print(f"disk budget {budget / MB:.2f} MB = {budget / GB:.6f} GB (mean footprint {mean_fp / MB:.2f} MB, "
              f"largest {max_fp / MB:.2f} MB: fits {budget / mean_fp:.2f} mean MOUSs); "
              f"max in flight {a.max_in_flight}", flush=True)
        with seaweedfs_server(run / "s3") as s3:
            bucket = s3.bucket("campaign")
            host, port = server.url.split("://", 1)[1].rstrip("/").split(":")
            env = {
                "ALMA_REGEN_WORKDIR": str(workdir),
                "ALMA_REGEN_PRODUCTS_URL": f"s3://{bucket}/regen",
                "ALMA_REGEN_BULK_WORKLIST": str(worklist),
                "ALMA_REGEN_BULK_DISK_BUDGET_GB": repr(budget / GB),
                "ALMA_REGEN_BULK_MAX_IN_FLIGHT": str(a.max_in_flight),
                "ALMA_REGEN_FOOTPRINT_FACTOR": repr(a.factor),
                "ALMA_REGEN_WORKSPACE_KEEP": "nothing",
                "ALMA_REGEN_BULK_SCHEDULE": "* * * * *" if a.feeder == "schedule" else "",
                "AIRFLOW__CORE__PARALLELISM": str(a.parallelism),
                "AIRFLOW_CONN_ALMA_REQUEST_HANDLER": json.dumps(
                    {"conn_type": "http", "host": host, "port": int(port), "schema": "http"}),
                "AIRFLOW_CONN_ALMA_PRODUCTS_S3": json.dumps(
                    {"conn_type": "aws", "login": s3.access_key, "password": s3.secret_key,
                     "extra": {"endpoint_url": s3.endpoint_url, "region_name": s3.region}}),
            }
            with AirflowCluster(home, executor="LocalExecutor", env=env) as cluster:
                result = campaign(cluster, a, workdir, budget, fps, mouss, t_bench)
    finally:
        server.shutdown()
        server.server_close()
    result["bench_wall_s"] = round(time.monotonic() - t_bench, 1)
    result["code"] = code
    print(f"bench wall (synthesis, cluster start and stop included): {result['bench_wall_s']:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1, default=str))
        print(f"figures written to {a.json}")
    return 0 if result["ok"] else 1


def campaign(cluster, a, workdir: Path, budget: int, fps: dict, mouss: list, t_bench: float) -> dict:
    t = time.monotonic()
    cluster.migrate()
    # The pools before the scheduler: a scheduled feeder pass may start runs at once.
    cluster.cli("pools", "set", "casa", str(a.casa_slots), "CASA processes at once")
    cluster.cli("pools", "set", "alma_staging", str(a.staging_slots), "downloads at once")
    cluster.start_all()
    cluster.wait_ready()
    cluster.wait_dag(REGEN)
    bulk_dag = cluster.wait_dag(BULK)
    print(f"\nAirflow {cluster.base_url} ready in {time.monotonic() - t:.0f} s (LocalExecutor, SQLite); "
          f"{BULK} schedule: {bulk_dag.get('timetable_summary') or bulk_dag.get('timetable_description')}; "
          f"feeder: {a.feeder}", flush=True)

    samples, t0 = [], time.monotonic()
    last_trigger, last_campaign, camp, triggered = -1e9, -1e9, None, 0
    done_since, import_errors = None, []
    while True:
        now = time.monotonic()
        cluster.check_alive()
        used, members = member_usage(workdir)
        reserved = admission.reserved(workdir)
        active = runs_of(cluster, REGEN, ("queued", "running"))
        running = sum(r["state"] == "running" for r in active)
        queued = len(active) - running
        bulk_active = runs_of(cluster, BULK, ("queued", "running"))
        if now - last_campaign >= 5:
            camp, last_campaign = campaign_api(cluster), now
        samples.append({"t": round(now - t0, 1), "member_bytes": used, "members": members,
                        "reserved_bytes": reserved, "running": running, "queued": queued,
                        "bulk_active": len(bulk_active)})
        if len(samples) % 30 == 1:
            c = camp or {}
            print(f"  t={now - t0:6.0f}s  disk {used / MB:7.2f} MB ({members} folders)  reserved "
                  f"{reserved / MB:7.2f} MB / {budget / MB:.2f}  runs running {running} queued {queued}  "
                  f"campaign done {c.get('done')}/{c.get('total')} running {c.get('running')} "
                  f"waiting {c.get('waiting')} failed {c.get('failed')}", flush=True)
        complete = bool(camp and camp.get("complete") and camp.get("total") == len(mouss))
        if complete and not active:
            done_since = done_since or now
            if now - done_since >= 3:  # a last look: the final cleanups and releases have landed
                break
        else:
            done_since = None
        if a.feeder == "trigger" and not complete and not bulk_active and now - last_trigger >= a.trigger_every:
            cluster.api("POST", f"/dags/{BULK}/dagRuns", {"logical_date": None})
            last_trigger, triggered = now, triggered + 1
        if len(samples) % 30 == 0:  # a DAG that no longer parses stops every run in flight: say so, stop
            errs = cluster.api("GET", "/importErrors").get("import_errors") or []
            if errs:
                import_errors = [{"file": e["filename"], "at": e["timestamp"],
                                  "error": e["stack_trace"].strip().splitlines()[-1]} for e in errs]
                print(f"STOPPED: the DAGs no longer parse (their runs are no longer scheduled): {import_errors}",
                      flush=True)
                break
        if now - t0 > a.timeout:
            print(f"TIMEOUT after {a.timeout:.0f} s", flush=True)
            break
        time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
    t_end = time.monotonic()
    out = report(cluster, a, workdir, budget, fps, mouss, samples, camp, t0, t_end, triggered)
    out["import_errors"] = import_errors
    if import_errors:
        out["ok"] = False
        print("RESULT: NOT OK (stopped: the DAGs stopped parsing, see import_errors)")
    return out


def report(cluster, a, workdir, budget, fps, mouss, samples, camp, t0, t_end, triggered) -> dict:
    camp = campaign_api(cluster)
    bulk_runs = runs_of(cluster, BULK)
    regen_runs = runs_of(cluster, REGEN)
    # The feeder's passes: each bulk run's plan summary.
    passes, deferrals, reasons = [], 0, {}
    for b in bulk_runs:
        s = xcom(cluster, BULK, b["dag_run_id"], "plan", "summary") or {}
        kinds = {k: [e["mous_uid"] for e in s.get(k) or []] for k in ("start", "skipped", "deferred", "too_large")}
        for e in s.get("deferred") or []:
            why = e.get("why", "")
            r = ("in flight" if why.startswith("in flight") else "budget" if "budget" in why else
                 "in-flight cap" if "cap is" in why else "reserved meanwhile" if "meanwhile" in why else why)
            reasons[r] = reasons.get(r, 0) + 1
        deferrals += len(s.get("deferred") or [])
        passes.append({"run_id": b["dag_run_id"], "run_type": b.get("run_type"), "state": b["state"],
                       "began": b.get("start_date"), "reserved_gb_before": s.get("reserved_gb"),
                       "in_flight_before": s.get("in_flight"), **{k: len(v) for k, v in kinds.items()},
                       "started": kinds["start"],
                       "deferred_why": [f"{e['mous_uid']}: {e.get('why')}" for e in s.get("deferred") or []]})
    # Each MOUS: its runs, their outcome and what the publish cleaned.
    per, durations, cleaned = {}, [], []
    for r in regen_runs:
        mous = (r.get("conf") or {}).get("mous_uid")
        st, en = ts(r.get("start_date")), ts(r.get("end_date"))
        dur = (en - st).total_seconds() if st and en else None
        if dur is not None:
            durations.append(dur)
        pub = xcom(cluster, REGEN, r["dag_run_id"], "publish") if r["state"] == "success" else None
        ws = (pub or {}).get("workspace") if isinstance(pub, dict) else None
        if ws and ws.get("keep") == "nothing" and not ws.get("error"):
            cleaned.append(mous)
        per.setdefault(mous, []).append({
            "run_id": r["dag_run_id"], "state": r["state"], "queued_at": r.get("queued_at"),
            "start": r.get("start_date"), "end": r.get("end_date"), "duration_s": round(dur, 1) if dur else None,
            "published": (pub or {}).get("manifest") if isinstance(pub, dict) else None,
            "fidelity_ok": (pub or {}).get("fidelity_ok") if isinstance(pub, dict) else None,
            "cleanup": ({"whole_folder": ws.get("whole_folder"), "bytes_freed": ws.get("bytes_freed"),
                         "error": ws.get("error")} if ws else None)})
    starts = [ts(b["start_date"]) for b in bulk_runs if b.get("start_date")]
    ends = [ts(r["end_date"]) for r in regen_runs if r.get("end_date")]
    camp_wall = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    peak_used = max((s["member_bytes"] for s in samples), default=0)
    peak_res = max((s["reserved_bytes"] for s in samples), default=0)
    peak_running = max((s["running"] for s in samples), default=0)
    peak_flying = max((s["running"] + s["queued"] for s in samples), default=0)
    mean_used = statistics.mean(s["member_bytes"] for s in samples) if samples else 0
    mean_res = statistics.mean(s["reserved_bytes"] for s in samples) if samples else 0
    busy = sum(1 for s in samples if s["running"]) / len(samples) if samples else 0
    end_used, end_members = member_usage(workdir)
    leftovers = sorted(p.name for p in workdir.glob("member.*")) if workdir.exists() else []
    fits = budget / statistics.mean(f["footprint"] for f in fps.values())
    sum_dur = sum(durations)
    states = {m: (per.get(m) or [{}])[-1].get("state", "never started") for m in mouss}
    out = {
        "ok": all(v == "success" for v in states.values()) and bool(camp and camp.get("complete")),
        "mous": len(mouss), "feeder": a.feeder, "feeder_passes": len(bulk_runs),
        "feeder_triggers_by_bench": triggered,
        "deferrals": deferrals, "deferral_reasons": reasons,
        "budget_bytes": budget, "footprint_factor": a.factor, "max_in_flight": a.max_in_flight,
        "footprints": fps, "budget_fits_mean_mous": round(fits, 2),
        "peak_member_bytes": peak_used, "peak_reserved_bytes": peak_res,
        "peak_member_over_budget": round(peak_used / budget, 3), "peak_reserved_over_budget": round(peak_res / budget, 3),
        "mean_member_over_budget": round(mean_used / budget, 3), "mean_reserved_over_budget": round(mean_res / budget, 3),
        "peak_runs_running": peak_running, "peak_runs_in_flight": peak_flying,
        "campaign_wall_s": round(camp_wall, 1) if camp_wall else None,
        "sampled_wall_s": round(t_end - t0, 1),
        "runs": len(regen_runs), "sum_run_durations_s": round(sum_dur, 1),
        "mean_run_s": round(sum_dur / len(durations), 1) if durations else None,
        "mean_runs_in_flight": round(sum_dur / camp_wall, 2) if camp_wall else None,
        "utilisation_of_admitted_slots": round(sum_dur / camp_wall / fits, 3) if camp_wall else None,
        "fraction_of_time_a_run_was_running": round(busy, 3),
        "cleanups": len(cleaned), "bytes_freed_by_cleanups": sum(
            (r["cleanup"] or {}).get("bytes_freed") or 0 for rs in per.values() for r in rs),
        "workdir_member_bytes_at_end": end_used, "member_folders_at_end": leftovers,
        "campaign_api": camp, "per_mous": per, "outcome": states, "passes": passes, "samples": samples,
    }
    print_report(out)
    return out


def print_report(o: dict):
    print("\n================ campaign report ================")
    print(f"MOUSs {o['mous']}; feeder {o['feeder']}: {o['feeder_passes']} passes of {BULK}"
          + (f" ({o['feeder_triggers_by_bench']} triggered by the bench)" if o["feeder"] == "trigger" else ""))
    print("per MOUS (latest run; runs; duration; cleanup):")
    for m, st in o["outcome"].items():
        rs = o["per_mous"].get(m) or []
        last = rs[-1] if rs else {}
        c = last.get("cleanup") or {}
        print(f"  {m:<24} {o['footprints'][m]['ebs']} EB  {st:<8} runs {len(rs)}  "
              f"{last.get('duration_s') or 0:6.1f} s  fidelity_ok={last.get('fidelity_ok')}  "
              f"cleanup: {'whole folder' if c.get('whole_folder') else c.get('error') or '-'}"
              f"{' %.2f MB freed' % (c['bytes_freed'] / MB) if c.get('bytes_freed') else ''}")
    print("feeder passes (started / deferred / skipped):")
    for p in o["passes"]:
        print(f"  {p['run_id']:<48} {p['state']:<8} began {p['began']}  started {len(p['started'])}"
              f" deferred {p['deferred']} skipped {p['skipped']} too_large {p['too_large']}"
              f" (in flight before: {p['in_flight_before']})")
    print(f"deferrals seen: {o['deferrals']} {o['deferral_reasons']}")
    b = o["budget_bytes"]
    print(f"disk budget {b / MB:.2f} MB (fits {o['budget_fits_mean_mous']} mean MOUSs; factor {o['footprint_factor']:g})")
    print(f"peak actual disk (member folders) {o['peak_member_bytes'] / MB:.2f} MB = {o['peak_member_over_budget']:.1%}"
          f" of the budget; mean {o['mean_member_over_budget']:.1%}")
    print(f"peak reserved (ledger)            {o['peak_reserved_bytes'] / MB:.2f} MB = "
          f"{o['peak_reserved_over_budget']:.1%} of the budget; mean {o['mean_reserved_over_budget']:.1%}")
    print(f"peak alma_regenerate runs running {o['peak_runs_running']}, in flight (queued+running) "
          f"{o['peak_runs_in_flight']}")
    print(f"campaign wall (first feeder pass start -> last run end) {o['campaign_wall_s']} s; sampled "
          f"{o['sampled_wall_s']} s")
    print(f"runs {o['runs']}; sum of run durations {o['sum_run_durations_s']} s (mean {o['mean_run_s']} s)")
    print(f"utilisation: {o['mean_runs_in_flight']} runs in flight on average (sum of durations / campaign wall) = "
          f"{o['utilisation_of_admitted_slots']:.1%} of the {o['budget_fits_mean_mous']} the budget admits; "
          f"a run was running {o['fraction_of_time_a_run_was_running']:.1%} of the sampled time"
          if o["mean_runs_in_flight"] is not None else "utilisation: n/a")
    print(f"cleanups after publish: {o['cleanups']} ({o['bytes_freed_by_cleanups'] / MB:.2f} MB freed); "
          f"member folders at the end: {len(o['member_folders_at_end'])} ({o['workdir_member_bytes_at_end']} bytes)"
          f"{': ' + ', '.join(o['member_folders_at_end']) if o['member_folders_at_end'] else ''}")
    c = o["campaign_api"] or {}
    print(f"campaign API: total {c.get('total')} done {c.get('done')} running {c.get('running')} waiting "
          f"{c.get('waiting')} failed {c.get('failed')} too_large {c.get('too_large')} complete {c.get('complete')} "
          f"bulk_runs {c.get('bulk_runs')} elapsed {c.get('elapsed_s')} s throughput {c.get('throughput_per_h')}/h "
          f"eta {c.get('eta_s')}")
    print(f"RESULT: {'OK' if o['ok'] else 'NOT OK'}")


if __name__ == "__main__":
    sys.exit(main())
