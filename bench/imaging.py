#!/usr/bin/env python
"""Benchmark native imaging (with and without mapping) and publishing.

1. Native imaging of a synthetic delivery (`alma-regen synth`, restored with
   the native engine and split): the whole run with 1 worker (the units one
   after the other) and with 2 workers (units in parallel, as mapped tasks
   run), and the time of each unit (one science spw: continuum + cube).
2. Publishing: `alma_regen.products.publish.publish` of a member folder (its products,
   fidelity.json, logs, thumbnails, plus --extra-mb of larger FITS-sized
   files) to SeaweedFS (`weed mini`), against a plain boto3 `upload_file` of
   the same files (what `aws s3 cp` does: TransferManager, 10 threads, no
   verification, no manifest). Reported as MB/s and the ratio.

    .venv/bin/python bench/imaging.py [--ebs 2] [--repeat 2] [--extra-mb 256] [--tmpdir DIR]

Everything is written under one temporary folder, removed at the end.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "plugins"))

from fixtures_servers import seaweedfs_server  # noqa: E402

from alma_regen import calibration, fidelity, imaging  # noqa: E402
from alma_regen.products import publish  # noqa: E402
from alma_regen_dev.synth import synthesize  # noqa: E402


def bench_imaging(member: Path, repeat: int) -> dict:
    out = {}
    for workers in (1, 2):
        totals, units = [], {}
        for _ in range(repeat):
            t0 = time.monotonic()
            rec = imaging.image(member, engine="native", workers=workers)
            totals.append(time.monotonic() - t0)
            for u in rec["unit_results"]:
                units.setdefault(u["unit"], []).append(sum(i["seconds"] for i in u["images"]))
        out[workers] = {"total_s": statistics.median(totals), "units": len(rec["units"]),
                        "unit_s": {k: statistics.median(v) for k, v in units.items()}}
    return out


def bench_publish(member: Path, root: Path, extra_mb: int) -> dict:
    big = member / "imaging" / "products"
    for i in range(extra_mb // 64):
        with open(big / f"member.uid___A001_X0_X0.bench{i}_sci.spw{i}.cube.I.pbcor.fits", "wb") as f:
            for _ in range(64):
                f.write(os.urandom(1 << 20))
    (root / "weed").mkdir()
    with seaweedfs_server(root / "weed") as s3:
        client = s3.client()
        files = publish.collect(member)["files"]
        size = sum(p.stat().st_size for p in files.values())
        b1, b2 = s3.bucket("ours"), s3.bucket("plain")
        t0 = time.monotonic()
        manifest = publish.publish(member, f"s3://{b1}/bench", run="b1", client=client)
        ours = time.monotonic() - t0
        t0 = time.monotonic()
        for key, path in files.items():
            client.upload_file(str(path), b2, f"bench/{key}")
        plain = time.monotonic() - t0
    return {"files": len(files), "mb": size / 1e6, "objects": len(manifest["outputs"]) + 1,
            "ours_s": ours, "plain_s": plain, "ours_mb_s": size / 1e6 / ours, "plain_mb_s": size / 1e6 / plain,
            "ratio_time": ours / plain}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ebs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--extra-mb", type=int, default=256, help="large files added to the publish set")
    ap.add_argument("--tmpdir", default=None)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="bench-imaging-", dir=a.tmpdir))
    try:
        t0 = time.monotonic()
        synth = synthesize(root / "synth", ebs=a.ebs, seed=1)
        member = Path(synth["member_dir"])
        calibration.calibrate(member, calibration.Options(engine="native", dosplit=True))
        print(f"synthetic delivery ({a.ebs} EBs) made and restored in {time.monotonic() - t0:.1f} s", flush=True)
        img = bench_imaging(member, a.repeat)
        fidelity.check_fidelity(member)
        pub = bench_publish(member, root, a.extra_mb)
        print("\nnative imaging (per unit = one science spw of the target: continuum + cube)")
        for w, r in img.items():
            per = ", ".join(f"{k} {v:.1f} s" for k, v in r["unit_s"].items())
            print(f"  workers={w}: {r['units']} units in {r['total_s']:.1f} s  ({r['total_s'] / r['units']:.1f} s per spw; "
                  f"CASA time per unit: {per})")
        print(f"  speed-up with 2 workers: {img[1]['total_s'] / img[2]['total_s']:.2f}x")
        print(f"\npublish {pub['files']} files, {pub['mb']:.1f} MB ({pub['objects']} objects with index.html, manifest)")
        print(f"  ours (verified, checksums, manifest, latest): {pub['ours_s']:.2f} s = {pub['ours_mb_s']:.1f} MB/s")
        print(f"  boto3 upload_file (aws s3 cp style):          {pub['plain_s']:.2f} s = {pub['plain_mb_s']:.1f} MB/s")
        print(f"  ratio ours/plain time: {pub['ratio_time']:.2f}")
        print(json.dumps({"imaging": img, "publish": pub}, default=str))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
