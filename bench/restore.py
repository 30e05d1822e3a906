#!/usr/bin/env python
"""Calibration figures: mapped per-EB restore vs serial, the runner's overhead,
and the native restore against the real pipeline's hifa_restoredata.

    .venv/bin/python bench/restore.py [--ebs 4] [--antennas 24] [--pipeline-only]
                                      [--pipeline-registry REGISTRY.json]

1. serial:  calibrate() one EB after the other, each in its own CASA child (the runner);
2. mapped:  the same on 2 workers at once (the DAG's mapped restore on 2 slots);
3. direct:  one Python that imports casatasks once and runs the same restore
            steps in-process for every EB (the baseline: a person's CASA session).
4. native vs pipeline: the native restore (every EB, one after the other, no
            split) and then the delivery's own restore script under the real
            pipeline (hifa_restoredata, laid out as scriptForPI does), on copies
            of the same delivery; then CORRECTED_DATA and FLAG compared per EB.
Prints wall times and the ratios mapped/serial, serial/direct (goal <= 1.10)
and pipeline/native, with the largest relative difference and the flag
differences per EB. Part 4 needs a pipeline CASA in the registry
(default: $ALMA_REGEN_CASA_REGISTRY); --pipeline-only runs part 4 alone.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))
sys.path.insert(0, str(ROOT / "tests"))
from alma_regen import calibration, naming  # noqa: E402
from alma_regen.casa.env import child_env  # noqa: E402
from alma_regen.casa.registry import REGISTRY_ENV, load_registry  # noqa: E402
from alma_regen_dev.synth import synthesize  # noqa: E402
from fixtures_pipeline_restore import pipeline_launcher, real_restore  # noqa: E402
from fixtures_synth import run_casa_python  # noqa: E402

DIRECT = r"""
import json, sys, time
t0 = time.monotonic()
sys.path.insert(0, sys.argv[1])
import restore_eb  # imports casatasks once
jobs = json.load(open(sys.argv[2]))
for job in jobs:
    restore_eb.restore(job)
print(json.dumps({"seconds": time.monotonic() - t0}))
"""


def fresh(src: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, symlinks=True)
    return dst


def native_vs_pipeline(s, src: Path, root: Path, registry_path: str):
    """Part 4: the native restore, then the real hifa_restoredata, then the comparison."""
    launcher = pipeline_launcher(load_registry(registry_path, include_default=False)) if registry_path else None
    if launcher is None:
        print(f"native vs pipeline: skipped, no pipeline CASA in the registry {registry_path or '(none)'} "
              f"(set ${REGISTRY_ENV} or --pipeline-registry)")
        return
    native = fresh(src, root / "native" / src.name)
    # The default modular CASA, not the pipeline CASA's Python (same CASA version, other layer).
    p = calibration.prepare(native, calibration.Options(engine="native"), registry=load_registry(""))
    t = time.monotonic()
    for eb in s["ebs"]:
        calibration.restore_eb(native, eb, split=False, resolution=p.resolution)
    t_native = time.monotonic() - t
    print(f"native   {t_native:6.1f} s (modular CASA {p.resolution.launcher.version}, one child per EB, no split)",
          flush=True)
    theirs = fresh(src, root / "pipeline" / src.name)
    t = time.monotonic()
    work = real_restore(theirs, launcher)
    t_pipe = time.monotonic() - t
    print(f"pipeline {t_pipe:6.1f} s (hifa_restoredata, pipeline {launcher.pipeline}, one CASA for all EBs)")
    print(f"pipeline / native : {t_pipe / t_native:.2f}")
    for eb in s["ebs"]:
        f = naming.uid_to_file(eb)
        out = root / f"compare.{f}.json"
        run_casa_python(ROOT / "tests" / "casa" / "compare_restores.py", native / "calibrated" / "working" / f"{f}.ms",
                        work / f"{f}.ms", out, cwd=root)
        r = json.loads(out.read_text())
        spws = r["spws"].values()
        print(f"{f}: science spws {r['science_spws']}, max relative difference of CORRECTED_DATA "
              f"{max(x.get('max_rel_corrected', float('inf')) for x in spws):.3g}, "
              f"flag differences {sum(x.get('flag_differences', 0) for x in spws)}"
              + (f" MISMATCH {r.get('mismatch') or [x['mismatch'] for x in spws if 'mismatch' in x]}"
                 if r.get("mismatch") or any("mismatch" in x for x in spws) else ""))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ebs", type=int, default=4)
    ap.add_argument("--antennas", type=int, default=24)
    ap.add_argument("--pipeline-registry", default=os.environ.get(REGISTRY_ENV, ""))
    ap.add_argument("--pipeline-only", action="store_true", help="only part 4: native vs the real pipeline")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-restore-"))
    try:
        t = time.monotonic()
        s = synthesize(root / "synth", ebs=a.ebs, seed=11, antennas=a.antennas)
        raw = sum(f["size"] for f in s["files"] if f["semantics"] == "#progenitor")
        print(f"delivery: {a.ebs} EBs, {a.antennas} antennas, raw {raw / 1e6:.1f} MB "
              f"(synth {time.monotonic() - t:.1f} s)", flush=True)
        src = Path(s["member_dir"])
        if a.pipeline_only:
            return native_vs_pipeline(s, src, root, a.pipeline_registry)
        results = {}
        for name, parallel in (("serial", 1), ("mapped", 2)):
            member = fresh(src, root / name / src.name)
            t = time.monotonic()
            calibration.calibrate(member, calibration.Options(), parallel=parallel)
            results[name] = time.monotonic() - t
            print(f"{name:<7} {results[name]:6.1f} s", flush=True)
        member = fresh(src, root / "direct" / src.name)
        calibration.prepare_layout(member, s["ebs"])
        jobs = [calibration.restore_job(member, eb, split=True) for eb in s["ebs"]]
        (root / "jobs.json").write_text(json.dumps(jobs))
        t = time.monotonic()
        out = subprocess.run([sys.executable, "-c", DIRECT, str(ROOT / "include" / "casa_scripts"),
                              str(root / "jobs.json")], env=child_env(), cwd=member / "calibrated" / "working",
                             capture_output=True, text=True, check=True)
        results["direct"] = time.monotonic() - t
        inner = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
        print(f"direct  {results['direct']:6.1f} s (one Python, casatasks imported once; "
              f"{inner:.1f} s inside)")
        print(f"mapped / serial : {results['mapped'] / results['serial']:.2f}")
        print(f"serial / direct : {results['serial'] / results['direct']:.2f}  (runner overhead; goal <= 1.10)")
        print(f"per EB: serial {results['serial'] / a.ebs:.2f} s, direct {results['direct'] / a.ebs:.2f} s")
        native_vs_pipeline(s, src, root, a.pipeline_registry)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
