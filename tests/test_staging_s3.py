"""Staging from an S3 mirror: a real SeaweedFS (`weed mini`) started by the session fixture."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import archive_builder as ab
import pytest

from alma_regen import naming
from alma_regen.errors import TransientError
from alma_regen.staging import S3Source, StageOptions, list_mous, member_path, stage_eb, stage_mous
from alma_regen.staging.errors import AccessDeniedError, NotFoundError

FAST = StageOptions(backoff=0.01, max_attempts=3)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return ab.build_archive(tmp_path_factory.mktemp("s3arc") / "archive", n_binaries=4, binary_size=300_000)


@pytest.fixture(scope="module")
def mirror(seaweedfs, archive):
    bucket = seaweedfs.bucket("mirror")
    ab.upload(archive, seaweedfs.client(), bucket, "alma/archive")
    return f"s3://{bucket}/alma/archive"


# Small parts make these small files big enough for ranges. "switched": one stream first,
# and since no stream reaches an infinite rate (and no idle CPU is asked for), the rest goes on
# in ranges after the probe.
PATHS = {"single-stream": dict(workers=1),
         "parallel-parts": dict(part_size=64 * 1024, parallel_min=128 * 1024, workers=4, probe_bytes=0),
         "switched": dict(part_size=64 * 1024, parallel_min=128 * 1024, workers=4, probe_bytes=100_000,
                          parallel_below=float("inf"), spare_cpu=0.0),
         # A slow stream on a machine without idle CPU stays one stream (more than all of it asked).
         "busy-machine-stays": dict(part_size=64 * 1024, parallel_min=128 * 1024, workers=4, probe_bytes=100_000,
                                    parallel_below=float("inf"), spare_cpu=1.01),
         "fast-stream-stays": dict(part_size=64 * 1024, parallel_min=128 * 1024, workers=4, probe_bytes=100_000,
                                   parallel_below=0.0)}


@pytest.mark.parametrize("path", list(PATHS))
def test_full_mous_from_s3_is_byte_identical(tmp_path, seaweedfs, archive, mirror, path, caplog):
    source = S3Source(mirror, seaweedfs.client(), **PATHS[path])
    caplog.set_level("INFO", logger="alma_regen.staging")
    summary = stage_mous(archive.mous, source, tmp_path / "work", FAST)
    assert ab.staged_member(member_path(tmp_path / "work", archive.mous)) == ab.expected_member(archive)
    for f in summary["files"]:
        assert f["sha256"] == hashlib.sha256(archive.path(f["file"]).read_bytes()).hexdigest()
    switched = [r.getMessage() for r in caplog.records if "parallel ranges" in r.getMessage()]
    # Each of the 4 ASDMs (1.2 MB) goes on in ranges after 100 kB, and only where asked.
    assert len(switched) == (len(archive.ebs) if path == "switched" else 0), switched
    again = stage_mous(archive.mous, source, tmp_path / "work", FAST)
    assert {f["status"] for f in again["files"]} == {"skipped"}


def test_listing_ignores_other_files_under_the_prefix(seaweedfs, archive, mirror):
    client = seaweedfs.client()
    bucket = mirror.split("/")[2]
    client.put_object(Bucket=bucket, Key="alma/archive/2023.1.00002.S_uid___A001_X9_X9_auxiliary.tar", Body=b"x")
    client.put_object(Bucket=bucket, Key="alma/archive/sub/deeper.tar", Body=b"x")
    listing = list_mous(S3Source(mirror, client), archive.mous)
    assert listing.project == archive.project and sorted(listing.asdms) == sorted(archive.ebs)
    assert listing.asdms[archive.ebs[0]].etag


def test_object_replaced_after_the_listing_restarts_on_the_new_version(tmp_path, seaweedfs, archive):
    client = seaweedfs.client()
    bucket = seaweedfs.bucket("changed")
    ab.upload(archive, client, bucket, "")
    eb = archive.ebs[0]
    source = S3Source(f"s3://{bucket}", client, part_size=64 * 1024, parallel_min=128 * 1024)
    listing = list_mous(source, archive.mous)
    new = ab.asdm_tar(tmp_path / "new.tar", eb, n_binaries=4, binary_size=300_000, seed=7)
    client.upload_file(str(new), bucket, archive.asdm_name(eb))  # same size, new ETag
    with pytest.raises(TransientError):  # If-Match fails: the listing is stale
        stage_eb(archive.mous, eb, source, tmp_path / "work", FAST, listing=listing)
    result = stage_eb(archive.mous, eb, source, tmp_path / "work", FAST)  # the DAG's retry: a new listing
    assert result["sha256"] == hashlib.sha256(new.read_bytes()).hexdigest()


def test_missing_object_is_permanent(tmp_path, seaweedfs, archive):
    client = seaweedfs.client()
    bucket = seaweedfs.bucket("missing")
    ab.upload(archive, client, bucket, "p")
    source = S3Source(f"s3://{bucket}/p", client)
    listing = list_mous(source, archive.mous)
    client.delete_object(Bucket=bucket, Key=f"p/{archive.asdm_name(archive.ebs[0])}")
    with pytest.raises(NotFoundError):
        stage_eb(archive.mous, archive.ebs[0], source, tmp_path / "work", FAST, listing=listing)


def test_bad_credentials_are_permanent(seaweedfs, archive, mirror):
    import boto3
    client = boto3.client("s3", endpoint_url=seaweedfs.endpoint_url, aws_access_key_id="nobody",
                          aws_secret_access_key="wrong", region_name="us-east-1")
    with pytest.raises(AccessDeniedError):
        list_mous(S3Source(mirror, client), archive.mous)


def test_cli_stage_from_s3_with_the_environment(tmp_path, seaweedfs, archive, mirror):
    from fixtures_servers import cli_env
    r = subprocess.run([sys.executable, "-m", "alma_regen.cli", "stage", archive.mous, "--source", mirror,
                        "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=120,
                       env=cli_env(**seaweedfs.env()))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["source"] == mirror
    assert ab.staged_member(member_path(tmp_path / "work", archive.mous)) == ab.expected_member(archive)
    assert (member_path(tmp_path / "work", archive.mous) / "raw" /
            f".{naming.asdm_dir(archive.ebs[0])}.staged.json").is_file()
