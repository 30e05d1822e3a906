#!/usr/bin/env python
"""Benchmark publishing one product file to S3 against what a user would otherwise run.

One file of random bytes (default 512 MB) on local disk, SeaweedFS (`weed mini`) on loopback.
Timed, each to a new key, best of --runs (the order rotates between rounds):
  ours            products.upload.Uploader.upload_file: sha256 + per-part MD5/SHA256, multipart
                  with S3 checksums, then a HEAD that verifies size, ETag and checksum
  boto3           boto3's upload_file (its default TransferConfig), no verification
  boto3+sha256    a sha256 pass, then boto3's upload_file (a checksum for the manifest)
  read (limit)    reading the file once and hashing it with sha256 (the CPU/disk floor of
                  any verified upload from this disk)
Prints seconds, MB/s and the ratios ours / boto3 and ours / boto3+sha256.

The client is configured as it behaves on an https endpoint (AWS, any production store):
botocore does not SHA256-sign a body that carries a checksum header there, but always does
over http, which the loopback SeaweedFS speaks: one more hash of every part for us and none
for boto3's upload_file (its CRC32 trailer is never signed), a cost no production run pays.

    .venv/bin/python bench/publish.py [--size-mb 512] [--runs 3] [--tmpdir DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

from alma_regen.products.upload import Uploader  # noqa: E402
from alma_regen_dev.local_s3 import seaweedfs_server  # noqa: E402


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 << 20)
            f.write(os.urandom(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tmpdir", default=None)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-publish-", dir=a.tmpdir))
    try:
        src = root / "product.fits"
        size = a.size_mb << 20
        write_random(src, size)
        (root / "seaweedfs").mkdir()
        with seaweedfs_server(root / "seaweedfs") as s3:
            bucket = s3.bucket("bench")
            client = s3.client(s3={"payload_signing_enabled": False})
            up = Uploader(client, bucket)
            n = [0]

            def key() -> str:
                n[0] += 1
                return f"k{n[0]}"

            def ours():
                rec = up.upload_file(src, key())
                assert rec.get("verified") and rec["size"] == size, rec

            def boto():
                client.upload_file(str(src), bucket, key())

            def boto_sha():
                sha256_of(src)
                client.upload_file(str(src), bucket, key())

            def read():
                sha256_of(src)

            cases = {"ours": ours, "boto3": boto, "boto3+sha256": boto_sha, "read+sha256 (limit)": read}
            best = {k: float("inf") for k in cases}
            names = list(cases)
            for r in range(a.runs):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    t = time.perf_counter()
                    cases[name]()
                    best[name] = min(best[name], time.perf_counter() - t)
                    # Keep the store small: every upload went to a new key.
                    for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
                        client.delete_object(Bucket=bucket, Key=obj["Key"])
            up.close()
        mb = size / 1e6
        for name, s in best.items():
            print(f"{name:22s} {s:7.2f} s  {mb / s:7.0f} MB/s")
        summary = {"size_bytes": size, "runs": a.runs, "seconds": {k: round(v, 3) for k, v in best.items()},
                   "ours_vs_boto3": round(best["ours"] / best["boto3"], 2),
                   "ours_vs_boto3_plus_sha256": round(best["ours"] / best["boto3+sha256"], 2)}
        print(json.dumps(summary, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
