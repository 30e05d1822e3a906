#!/usr/bin/env python
"""Calibration figures: mapped per-EB restore vs serial, and the runner's overhead.

    .venv/bin/python bench/restore.py [--ebs 4] [--antennas 24]

1. serial:  calibrate() one EB after the other, each in its own CASA child (the runner);
2. mapped:  the same on 2 workers at once (the DAG's mapped restore on 2 slots);
3. direct:  one Python that imports casatasks once and runs the same restore
            steps in-process for every EB (the baseline: a person's CASA session).
Prints wall times and the ratios mapped/serial and serial/direct (goal <= 1.10).
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))
from alma_regen import calibration, naming  # noqa: E402
from alma_regen.casa.env import child_env  # noqa: E402
from alma_regen.synth import synthesize  # noqa: E402

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ebs", type=int, default=4)
    ap.add_argument("--antennas", type=int, default=24)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-restore-"))
    try:
        t = time.monotonic()
        s = synthesize(root / "synth", ebs=a.ebs, seed=11, antennas=a.antennas)
        raw = sum(f["size"] for f in s["files"] if f["semantics"] == "#progenitor")
        print(f"delivery: {a.ebs} EBs, {a.antennas} antennas, raw {raw / 1e6:.1f} MB "
              f"(synth {time.monotonic() - t:.1f} s)", flush=True)
        src = Path(s["member_dir"])
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
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
