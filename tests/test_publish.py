"""Publishing to real S3 (SeaweedFS): manifest last, verification, reruns, interruption."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from alma_regen import fidelity, s3
from alma_regen.products import publish, upload
from alma_regen.products.manifest import read_manifest
from alma_regen.errors import PermanentError, TransientError
from fixtures_servers import S3Server, free_port, weed_binary
from imaging_fixtures import fresh_member

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def member(native_imaged, tmp_path_factory):
    """A member folder with regenerated products, fidelity.json and thumbnails."""
    src, _ = native_imaged
    m = fresh_member(src, tmp_path_factory.mktemp("publish"))
    shutil.copytree(src / "imaging" / "products", m / "imaging" / "products")
    shutil.copy2(src / "imaging" / "imaging.json", m / "imaging" / "imaging.json")
    fidelity.check_fidelity(m)
    return m


def objects(client, bucket, prefix=""):
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = o["Size"]
    return out


def assert_manifest_matches_store(client, bucket, manifest):
    base = manifest["location"].split("/", 3)[3]
    for o in manifest["outputs"]:
        body = client.get_object(Bucket=bucket, Key=base + o["key"])["Body"].read()
        assert len(body) == o["size"], o["key"]
        assert hashlib.sha256(body).hexdigest() == o["sha256"], o["key"]


def test_publish_verifies_everything_and_writes_the_manifest_last(member, seaweedfs):
    client, bucket = seaweedfs.client(), seaweedfs.bucket("products")
    order = []
    manifest = publish.publish(member, f"s3://{bucket}/alma", run="r1", client=client,
                               progress=lambda key, done, total: order.append(key))
    base = "alma/uid___A001_X3001_X134/r1/"
    assert manifest["location"] == f"s3://{bucket}/{base}"
    # The manifest is the last object of the set; latest.json comes after it.
    assert order[-2:] == [base + "manifest.json", "alma/uid___A001_X3001_X134/latest.json"]
    stored = objects(client, bucket, base)
    keys = {o["key"] for o in manifest["outputs"]}
    assert set(stored) == {base + k for k in keys} | {base + "manifest.json"}
    assert {"fidelity.json", "calibration.json", "imaging.json", "index.html"} <= keys
    assert sum(k.startswith("products/") and k.endswith(".pbcor.fits") for k in keys) == 4
    assert any(k.startswith("thumbnails/") for k in keys) and any(k.startswith("logs/") for k in keys)
    assert all(o.get("verified") for o in manifest["outputs"])
    # SeaweedFS takes S3 additional checksums: every object carries one.
    assert all(o["checksum_crc32"] for o in manifest["outputs"])
    assert_manifest_matches_store(client, bucket, manifest)
    assert manifest["fidelity"]["ok"] and manifest["engines"]["imaging"]["engine"] == "native"
    assert manifest["inputs"] and all(i.get("sha256") or i.get("sha256_tree") for i in manifest["inputs"])
    latest = json.loads(client.get_object(Bucket=bucket, Key="alma/uid___A001_X3001_X134/latest.json")["Body"].read())
    assert latest["run"] == "r1" and latest["manifest"].endswith(base + "manifest.json")
    page = client.get_object(Bucket=bucket, Key=base + "index.html")["Body"].read().decode()
    assert "TW_Hya_synth_sci.spw0.cont.I.pbcor.fits" in page and "<img" in page and "pass" in page


def test_a_published_run_is_never_overwritten(member, seaweedfs):
    client, bucket = seaweedfs.client(), seaweedfs.bucket("products")
    first = publish.publish(member, f"s3://{bucket}", run="r1", client=client)
    with pytest.raises(PermanentError, match="already published"):
        publish.publish(member, f"s3://{bucket}", run="r1", client=client)
    second = publish.publish(member, f"s3://{bucket}", client=client)  # a new run id
    assert second["run"] != "r1"
    latest = json.loads(client.get_object(Bucket=bucket, Key="uid___A001_X3001_X134/latest.json")["Body"].read())
    assert latest["run"] == second["run"]
    assert read_manifest(client, f"s3://{bucket}", "uid://A001/X3001/X134", "r1") == first


def test_calibrated_ms_is_streamed_as_a_tar(member, seaweedfs, tmp_path):
    client, bucket = seaweedfs.client(), seaweedfs.bucket("products")
    manifest = publish.publish(member, f"s3://{bucket}/p", run="ms", client=client, include_ms=True)
    tars = [o for o in manifest["outputs"] if o["key"].startswith("calibrated/")]
    assert sorted(o["key"] for o in tars) == sorted(f"calibrated/{p.name}.tar"
                                                    for p in (member / "calibrated").glob("*.ms.split.cal"))
    assert_manifest_matches_store(client, bucket, manifest)
    body = client.get_object(Bucket=bucket, Key=f"p/uid___A001_X3001_X134/ms/{tars[0]['key']}")["Body"]
    with tarfile.open(fileobj=body, mode="r|") as tf:
        names = [m.name for m in tf]
    ms = tars[0]["key"][len("calibrated/"):-len(".tar")]
    assert names[0] == ms and f"{ms}/table.dat" in names


def test_bad_locations_and_run_ids(member):
    with pytest.raises(PermanentError, match="not an S3 location"):
        publish.publish(member, "http://example.org/x")
    with pytest.raises(PermanentError, match="run id"):
        publish.publish(member, "s3://bucket/x", run="../up")


# ------------------------------------------------------------------ interruption

class Weed:
    """A private `weed mini` that a test may stop (kill) and start again on the same data."""

    def __init__(self, root: Path):
        self.root = root
        (root / "data").mkdir(parents=True)
        self.secret = uuid.uuid4().hex
        (root / "s3.json").write_text(json.dumps({"identities": [{
            "name": "admin", "credentials": [{"accessKey": "k", "secretKey": self.secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        self.ports = {n: free_port(10000) for n in ("master", "volume", "filer", "s3", "admin")}
        self.server = S3Server(f"http://127.0.0.1:{self.ports['s3']}", "k", self.secret)
        self.proc = None

    def start(self):
        args = [weed_binary(), "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                *(f"-{n}.port={p}" for n, p in self.ports.items()), "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-webdav=false", "-admin.ui=false", f"-s3.config={self.root / 's3.json'}"]
        log = open(self.root / "weed.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                     start_new_session=True)
        client = self.server.client(connect_timeout=2, read_timeout=5)
        deadline = time.monotonic() + 90
        while True:
            try:
                client.list_buckets()
                client.head_bucket(Bucket=self.bucket) if getattr(self, "bucket", None) else None
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((self.root / "weed.log").read_text()[-2000:])
                time.sleep(0.5)

    def kill(self):
        """Stop the server for real: the whole process group, at once."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def weed(tmp_path):
    w = Weed(tmp_path / "weed")
    w.start()
    yield w
    w.kill()


def test_an_interrupted_publish_leaves_no_manifest_and_a_rerun_completes(member, weed, tmp_path):
    m = fresh_member(member, tmp_path / "m")
    shutil.copytree(member / "imaging", m / "imaging")
    # A product large enough for a multipart upload that the server dies in.
    big = m / "imaging" / "products" / "member.uid___A001_X3001_X134.big_sci.spw9.cube.I.pbcor.fits"
    big.write_bytes(os.urandom(48 * 1024 * 1024))
    client = weed.server.client(connect_timeout=2, read_timeout=10)
    bucket = "products-" + uuid.uuid4().hex[:8]
    client.create_bucket(Bucket=bucket)
    weed.bucket = bucket

    def stop_mid_upload(key, done, total):
        if key.endswith(big.name) and total is None and done >= upload.PART_SIZE:
            weed.kill()  # the server goes away between parts of the big file

    with pytest.raises(TransientError, match="unreachable|dropped"):
        publish.publish(m, f"s3://{bucket}/alma", run="r1", client=client, progress=stop_mid_upload, workers=2)
    weed.start()
    stored = objects(client, bucket)
    assert not any(k.endswith("manifest.json") or k.endswith("latest.json") for k in stored)
    assert read_manifest(client, f"s3://{bucket}/alma", "uid://A001/X3001/X134", "r1") is None
    # The retry of the same run completes; what had been uploaded and verifies is reused.
    manifest = publish.publish(m, f"s3://{bucket}/alma", run="r1", client=client)
    assert any(o.get("reused") for o in manifest["outputs"])
    big_out = next(o for o in manifest["outputs"] if o["key"].endswith(big.name))
    assert big_out["parts"] == 6 and big_out["checksum_crc32"].endswith("-6")
    assert_manifest_matches_store(client, bucket, manifest)


def test_a_file_goes_up_in_one_read_and_only_the_same_bytes_are_reused(seaweedfs, tmp_path):
    """One pass: the parts are hashed as they go up (no sha256 metadata is known when a
    multipart upload starts), so a resumed publish recognises its object by the server's
    CRC32 checksum, and a file of the same size with other bytes goes up again."""
    client, bucket = seaweedfs.client(), seaweedfs.bucket("onepass")
    up = upload.Uploader(client, bucket, part_size=upload.MIN_PART, workers=3)
    f = tmp_path / "cube.fits"
    f.write_bytes(os.urandom(3 * upload.MIN_PART + 1234))
    first = up.upload_file(f, "k/cube.fits")
    assert first["verified"] and first["parts"] == 4 and not first.get("reused")
    assert first["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert first["checksum_crc32"].endswith("-4")
    again = up.upload_file(f, "k/cube.fits")
    assert again["reused"] and again["sha256"] == first["sha256"]
    data = bytearray(f.read_bytes())
    data[2 * upload.MIN_PART + 7] ^= 0xFF  # same size, one byte of the third part differs
    f.write_bytes(bytes(data))
    changed = up.upload_file(f, "k/cube.fits")
    up.close()
    assert not changed.get("reused") and changed["verified"]
    assert changed["sha256"] == hashlib.sha256(bytes(data)).hexdigest() != first["sha256"]
    stored = client.get_object(Bucket=bucket, Key="k/cube.fits")["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == changed["sha256"]


# ------------------------------------------------------------------ command line

def test_cli_publish(member, seaweedfs):
    bucket = seaweedfs.bucket("cli")
    env = dict(os.environ, **seaweedfs.env())
    env["ALMA_REGEN_S3_ENDPOINT"] = env.pop("AWS_ENDPOINT_URL")
    cli = [sys.executable, "-m", "alma_regen.cli"]
    r = subprocess.run(cli + ["publish", str(member), "--to", f"s3://{bucket}/x", "--run", "c1"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["run"] == "c1"
    r = subprocess.run(cli + ["publish", str(member), "--to", f"s3://{bucket}/x", "--run", "c1"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "already published" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------ operator

def test_publish_operator_uses_the_connection_and_emits_the_mous_asset(member, seaweedfs, monkeypatch):
    from airflow.sdk import AssetAlias
    from airflow.sdk.execution_time.context import OutletEventAccessors

    from alma_regen.airflow.operators.publish import PRODUCTS_ALIAS, PublishOperator
    bucket = seaweedfs.bucket("op")
    monkeypatch.setenv("AIRFLOW_CONN_ALMA_PRODUCTS_S3", json.dumps(
        {"conn_type": "aws", "login": seaweedfs.access_key, "password": seaweedfs.secret_key,
         "extra": {"endpoint_url": seaweedfs.endpoint_url, "region_name": seaweedfs.region}}))
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", s3.ENDPOINT_ENV):
        monkeypatch.delenv(k, raising=False)
    op = PublishOperator(task_id="publish", member_dir=str(member), to=f"s3://{bucket}/regen")
    assert set(op.template_fields) == {"mous_uid", "workdir", "to", "run", "enabled"}
    assert [o.name for o in op.outlets] == [PRODUCTS_ALIAS]
    events = OutletEventAccessors()
    result = op.execute({"run_id": "manual__2026-01-01T00:00:00+00:00", "outlet_events": events})
    assert result["run"] == "manual__2026-01-01T00_00_00_00_00" and result["fidelity_ok"] is True
    alias_events = events[AssetAlias(PRODUCTS_ALIAS)].asset_alias_events
    assert len(alias_events) == 1
    ev = alias_events[0]
    assert ev.dest_asset_key.uri == f"s3://{bucket}/regen/uid___A001_X3001_X134"
    assert ev.extra["manifest"].endswith("/manifest.json") and ev.extra["run"] == result["run"]
    # A retry of the same DAG run after success is refused: the run is published.
    with pytest.raises(PermanentError, match="already published"):
        op.execute({"run_id": "manual__2026-01-01T00:00:00+00:00", "outlet_events": OutletEventAccessors()})
