#!/usr/bin/env python
"""Benchmark staging against the archive script's way and the disk's limit.

One ASDM-shaped tar (default 1.5 GB) is served by nginx (Debian package, started here as a
non-daemon child on a loopback port) and by SeaweedFS (`weed mini`). Timed, each into an
empty folder:
  ours         `alma-regen stage` (download + untar + sha256 + ASDM validation, one pass)
  wget+tar     `wget` to a file, then `tar xf` (the archive's downloadRequest.sh way)
  wget+sha+tar the same plus `sha256sum` (what it takes to get a checksum that way)
  curl|tar     `curl | tar x` (one pass, no checksum, no verification)
  local tar    `tar xf` of the cached archive file (the disk's limit)
Over S3 ours runs two ways: the default (4 parallel ranged GETs for a file of 32 MiB or more)
and one stream (--s3-workers 1); then both and curl|tar again behind a link of --far-mbps per
TCP stream (a far store, where one stream is held back and ranges add up).
Prints times (without and with the final `sync`), the CPU each method used (user + system of
its processes, not the server's), ratios and our peak memory (VmHWM of the staging process).
The goals (issue 15): HTTP within 1.2x of the local untar, S3 at or below `curl | tar x`,
both with the final sync (staged means on disk); the ratios without it are printed beside.

    .venv/bin/python bench/staging.py [--size-gb 1.5] [--tmpdir DIR] [--skip-s3] [--far-mbps 100]

Everything is written under one temporary folder, removed at the end (disk is limited).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "plugins"))

import archive_builder as ab  # noqa: E402
from fixtures_servers import free_port, seaweedfs_server  # noqa: E402

from alma_regen import naming  # noqa: E402
from alma_regen.staging.datalink import votable  # noqa: E402

BDF_SIZE = 64 << 20  # one visibility file of ASDMBinary/


class _Random:
    """A file-like of `size` random bytes, produced in pieces (no big buffer)."""

    def __init__(self, size: int):
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


def build_big_asdm(path: Path, eb: str, size: int) -> None:
    """An ASDM tar of about `size` bytes: the small tables plus BDF_SIZE binary files."""
    n = max(1, size // BDF_SIZE)
    small = ab.asdm_files(eb, n_binaries=n, binary_size=1)  # the tables, with the right dataUIDs
    pfx = f"{ab.prefix()}/raw/{naming.asdm_dir(eb)}"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for rel, data in small.items():
            ti = tarfile.TarInfo(f"{pfx}/{rel}")
            ti.mtime = 1_700_000_000
            if rel.startswith("ASDMBinary/"):
                ti.size = BDF_SIZE
                tar.addfile(ti, _Random(BDF_SIZE))
            else:
                ti.size = len(data)
                tar.addfile(ti, __import__("io").BytesIO(data))


def nginx_conf(root: Path, archive: Path, port: int, datalink: Path) -> Path:
    conf = root / "nginx.conf"
    conf.write_text(f"""
user root;
worker_processes 2;
daemon off;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {root}/nginx-tmp;
    proxy_temp_path {root}/nginx-tmp;
    fastcgi_temp_path {root}/nginx-tmp;
    uwsgi_temp_path {root}/nginx-tmp;
    scgi_temp_path {root}/nginx-tmp;
    server {{
        listen 127.0.0.1:{port};
        location /dataPortal/ {{ alias {archive}/; }}
        location = /datalink/sync {{ default_type application/x-votable+xml; alias {datalink}; }}
    }}
}}
""")
    (root / "nginx-tmp").mkdir(exist_ok=True)
    return conf


class FarLink:
    """A TCP proxy that lets each connection's answer through at `rate` bytes/s.

    What a far store looks like to one worker: each TCP stream is held to about
    window / round-trip time, while parallel streams add up. (netem is not in this
    kernel; a token bucket per connection is the part of a WAN that matters here.)
    """

    def __init__(self, target_port: int, rate: float):
        self.target, self.rate = target_port, rate
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, server, 0.0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, self.rate), daemon=True).start()

    @staticmethod
    def _pipe(src, dst, rate: float) -> None:
        t0, sent = time.monotonic(), 0
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
                sent += len(data)
                ahead = sent / rate - (time.monotonic() - t0) if rate else 0
                if ahead > 0:
                    time.sleep(ahead)
        except OSError:
            pass
        finally:
            for sk in (src, dst):
                try:
                    sk.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def wait_http(url: str, timeout: float = 20) -> None:
    import urllib.request
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read(1)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd, env=None, shell=False) -> tuple:
    """(seconds, seconds including `sync`, peak RSS in MB, CPU seconds) of one command.

    Peak RSS is the child's own VmHWM, polled while it runs (ru_maxrss would also count
    the forked image of this Python before exec).
    """
    subprocess.run(["sync"], check=True)  # start with no dirty pages of the previous run
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, shell=shell, executable="/bin/bash" if shell else None,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _hwm_mb(proc.pid))
        time.sleep(0.02)
    dt = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed: {proc.stderr.read().decode()[-2000:]}")
    subprocess.run(["sync"], check=True)  # staged means on disk: count the write-back too
    return dt, time.perf_counter() - t0, peak, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=1.5)
    ap.add_argument("--tmpdir", default=None, help="where the temporary folder goes (default: $TMPDIR)")
    ap.add_argument("--skip-s3", action="store_true")
    ap.add_argument("--far-mbps", type=float, default=100.0,
                    help="also stage from S3 behind a link of this many MB/s per stream (0: skip; default 100)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per method, the best is kept (default 3)")
    a = ap.parse_args()
    for tool in ("nginx", "wget", "curl", "tar", "sha256sum"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"bench/staging: {tool} is not installed (apt-get install nginx wget curl)")
    alma = str(Path(sys.executable).parent / "alma-regen")
    root = Path(tempfile.mkdtemp(prefix="alma-bench-staging-", dir=a.tmpdir))
    nginx = None
    try:
        archive = root / "archive"
        arc = ab.build_archive(archive, ebs=ab.EBS[:1], n_binaries=1, binary_size=1000)
        eb = arc.ebs[0]
        name = arc.asdm_name(eb)
        t0 = time.perf_counter()
        build_big_asdm(archive / name, eb, int(a.size_gb * 1e9))
        size = (archive / name).stat().st_size
        print(f"built {name}: {size / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s", flush=True)

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        rows = [{"ID": arc.mous, "access_url": f"{base}/dataPortal/{n}", "semantics": sem,
                 "content_type": "application/x-tar", "content_length": (archive / n).stat().st_size}
                for n, sem in arc.files.items()]
        (root / "datalink.xml").write_bytes(votable(arc.mous, rows))
        nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
        nginx = subprocess.Popen([nginx_bin, "-c", str(nginx_conf(root, archive, port, root / "datalink.xml")),
                                  "-p", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"{base}/datalink/sync?ID=x")
        results = {}
        out = root / "out"

        def run(label, cmd, env=None, shell=False):
            best = None
            for _ in range(a.repeat):  # best of N: the machine is shared
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                r = timed(cmd, env, shell)
                best = r if best is None or r[1] < best[1] else best
                shutil.rmtree(out, ignore_errors=True)
            dt, dts, rss, cpu = best
            results[label] = best
            print(f"  {label:28s} {dt:7.2f} s  {dts:7.2f} s with sync  {size / dts / 1e6:5.0f} MB/s"
                  f"  CPU {cpu:5.2f} s  peak RSS {rss:5.0f} MB  (load {os.getloadavg()[0]:.1f})", flush=True)

        url = f"{base}/dataPortal/{name}"
        print("nginx:")
        run("local tar xf (disk limit)", ["tar", "xf", str(archive / name), "-C", str(out)])
        run("ours (stage, sha256)", [alma, "stage", arc.mous, "--source", base, "--workdir", str(out)])
        run("wget then tar xf", f"wget -q -O {out}/f.tar {url} && tar xf {out}/f.tar -C {out}", shell=True)
        run("wget, sha256sum, tar xf",
            f"wget -q -O {out}/f.tar {url} && sha256sum {out}/f.tar >/dev/null && tar xf {out}/f.tar -C {out}",
            shell=True)
        run("curl | tar x", f"set -o pipefail; curl -sf {url} | tar x -C {out}", shell=True)
        nginx.terminate()
        nginx.wait(10)
        nginx = None

        if not a.skip_s3:
            (root / "seaweedfs").mkdir()
            with seaweedfs_server(root / "seaweedfs") as s3:
                bucket = s3.bucket("bench")
                client = s3.client()
                t0 = time.perf_counter()
                ab.upload(arc, client, bucket, "archive")
                print(f"SeaweedFS (upload {time.perf_counter() - t0:.1f} s):", flush=True)
                env = dict(os.environ, **s3.env())
                signed = client.generate_presigned_url("get_object", Params={"Bucket": bucket,
                                                                             "Key": f"archive/{name}"})
                stage_s3 = [alma, "stage", arc.mous, "--source", f"s3://{bucket}/archive", "--workdir", str(out)]
                run("ours s3 (default)", stage_s3, env=env)
                run("ours s3 (1 stream)", stage_s3 + ["--s3-workers", "1"], env=env)
                run("wget then tar xf (s3)", f"wget -q -O {out}/f.tar '{signed}' && tar xf {out}/f.tar -C {out}",
                    shell=True)
                run("curl | tar x (s3)", f"set -o pipefail; curl -sf '{signed}' | tar x -C {out}", shell=True)
                if a.far_mbps > 0:
                    # The same store behind a link of far_mbps per TCP stream: where ranges add up.
                    # One run each (they are long).
                    link = FarLink(int(s3.endpoint_url.rsplit(":", 1)[1]), a.far_mbps * 1e6)
                    far = dataclasses.replace(s3, endpoint_url=f"http://127.0.0.1:{link.port}")
                    far_env = dict(os.environ, **far.env())
                    far_signed = far.client().generate_presigned_url(
                        "get_object", Params={"Bucket": bucket, "Key": f"archive/{name}"})
                    print(f"SeaweedFS behind a link of {a.far_mbps:.0f} MB/s per stream:", flush=True)
                    runs, a.repeat = a.repeat, 1
                    run("far: ours s3 (default)", stage_s3, env=far_env)
                    run("far: ours s3 (1 stream)", stage_s3 + ["--s3-workers", "1"], env=far_env)
                    run("far: curl | tar x (s3)", f"set -o pipefail; curl -sf '{far_signed}' | tar x -C {out}",
                        shell=True)
                    a.repeat = runs
                    link.close()

        # Compared with the write-back included (index 1): staged data must be on disk.
        local = results["local tar xf (disk limit)"][1]
        ours = results["ours (stage, sha256)"][1]
        summary = {
            "size_bytes": size,
            "seconds": {k: round(v[0], 2) for k, v in results.items()},
            "seconds_with_sync": {k: round(v[1], 2) for k, v in results.items()},
            "cpu_seconds": {k: round(v[3], 2) for k, v in results.items()},
            "ours_peak_rss_mb": round(results["ours (stage, sha256)"][2]),
            "speedup_vs_wget_then_tar": round(results["wget then tar xf"][1] / ours, 2),
            "ours_vs_local_untar": round(ours / local, 2),
            "speedup_vs_wget_then_tar_no_sync": round(results["wget then tar xf"][0] / results["ours (stage, sha256)"][0], 2),
            "ours_vs_local_untar_no_sync": round(results["ours (stage, sha256)"][0] / results["local tar xf (disk limit)"][0], 2),
        }
        if "ours s3 (default)" in results:
            s3 = results["ours s3 (default)"][1]
            summary["s3_default_vs_curl_tar"] = round(s3 / results["curl | tar x (s3)"][1], 2)
            summary["s3_default_vs_curl_tar_no_sync"] = round(results["ours s3 (default)"][0]
                                                              / results["curl | tar x (s3)"][0], 2)
            summary["s3_1_stream_vs_curl_tar"] = round(results["ours s3 (1 stream)"][1]
                                                       / results["curl | tar x (s3)"][1], 2)
            summary["s3_default_vs_1_stream"] = round(s3 / results["ours s3 (1 stream)"][1], 2)
            summary["s3_speedup_vs_wget_then_tar"] = round(results["wget then tar xf (s3)"][1] / s3, 2)
            summary["s3_ours_vs_local_untar"] = round(s3 / local, 2)
            summary["s3_ours_peak_rss_mb"] = round(max(results[k][2] for k in results if k.startswith("ours s3")))
        if "far: ours s3 (default)" in results:
            far = results["far: ours s3 (default)"][1]
            summary["far_default_vs_curl_tar"] = round(far / results["far: curl | tar x (s3)"][1], 2)
            summary["far_default_vs_1_stream"] = round(far / results["far: ours s3 (1 stream)"][1], 2)
        print(f"\nours vs wget-then-tar: {summary['speedup_vs_wget_then_tar']}x faster (goal >= 2)")
        print(f"ours vs local untar:   {summary['ours_vs_local_untar']}x the time (goal <= 1.2; "
              f"{summary['ours_vs_local_untar_no_sync']}x without the final sync)")
        print(f"ours peak memory:      {summary['ours_peak_rss_mb']} MB (goal < 200)")
        if "s3_default_vs_curl_tar" in summary:
            print(f"s3 default vs curl|tar: {summary['s3_default_vs_curl_tar']}x the time (goal <= 1.0; "
                  f"{summary['s3_default_vs_curl_tar_no_sync']}x without the final sync)")
        if "far_default_vs_curl_tar" in summary:
            print(f"far s3 default vs curl|tar: {summary['far_default_vs_curl_tar']}x the time (goal <= 1.0)")
        summary["load_at_end"] = os.getloadavg()
        print(json.dumps(summary))
        return 0
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
