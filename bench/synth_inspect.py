#!/usr/bin/env python
"""Figures for the foundation: synth time and size for 2 and 4 EBs, inspect time on 10 EBs.

    .venv/bin/python bench/synth_inspect.py [--keep DIR]

Runs `alma-regen synth` (real CASA) for 2, 4 and 10 EBs, then times
`Delivery(member).plan()` (what `alma-regen inspect --json` does: README, PPR,
every ASDM validated with lxml) on the 10-EB delivery, median of 5.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
from alma_regen.delivery import Delivery  # noqa: E402
from alma_regen_dev.synth import synthesize  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="work here and keep the deliveries")
    a = ap.parse_args()
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench-synth-"))
    rows = []
    for ebs in (2, 4, 10):
        t = time.monotonic()
        s = synthesize(root / f"ebs{ebs}", ebs=ebs, seed=7)
        wall = time.monotonic() - t
        size = sum(f["size"] for f in s["files"])
        rows.append((ebs, wall, s["casa_seconds"], size, s["casa_peak_mb"], s["member_dir"]))
        print(f"synth {ebs:>2} EBs: {wall:6.1f} s wall ({s['casa_seconds']:.1f} s in CASA), "
              f"archive {size / 1e6:6.1f} MB, CASA peak {s['casa_peak_mb']:.0f} MB", flush=True)
    member = rows[-1][-1]
    times = []
    for _ in range(5):
        t = time.monotonic()
        plan = Delivery(member).plan()
        times.append(time.monotonic() - t)
    assert plan["ok"] and len(plan["raw"]["ebs"]) == 10
    print(f"inspect on 10 EBs: median {statistics.median(times) * 1000:.0f} ms "
          f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}) over 5 runs")
    per_eb = [r[1] / r[0] for r in rows]
    print(f"synth cost per EB: {', '.join(f'{x:.1f} s' for x in per_eb)} (2, 4, 10 EBs)")
    if not a.keep:
        import shutil
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
