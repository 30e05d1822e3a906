"""Staging from an S3 mirror: a real SeaweedFS (`weed mini`) started by the session fixture."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import archive_builder as ab
from archive_builder import FAST
import pytest

from alma_regen import naming
from alma_regen.errors import TransientError
from alma_regen.staging import S3Source, list_mous, member_path, stage_eb, stage_mous
from alma_regen.staging.errors import AccessDeniedError, NotFoundError


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return ab.build_archive(tmp_path_factory.mktemp("s3arc") / "archive", n_binaries=4, binary_size=300_000)


@pytest.fixture(scope="module")
def mirror(seaweedfs, archive):
    bucket = seaweedfs.bucket("mirror")
    ab.upload(archive, seaweedfs.client(), bucket, "alma/archive")
    return f"s3://{bucket}/alma/archive"


# Small parts make these small files big enough for ranges: "ranges" is the default's shape
# (4 parallel ranged GETs), "ranges-uneven" a part size that does not divide the files, with
# more workers than some files have parts.
PATHS = {"single-stream": dict(workers=1),
         "ranges": dict(part_size=64 * 1024, parallel_min=128 * 1024, workers=4),
         "ranges-uneven": dict(part_size=100_003, parallel_min=128 * 1024, workers=16)}


@pytest.mark.parametrize("path", list(PATHS))
def test_full_mous_from_s3_is_byte_identical(tmp_path, seaweedfs, archive, mirror, path):
    source = S3Source(mirror, seaweedfs.client(), **PATHS[path])
    summary = stage_mous(archive.mous, source, tmp_path / "work", FAST)
    assert ab.staged_member(member_path(tmp_path / "work", archive.mous)) == ab.expected_member(archive)
    for f in summary["files"]:
        assert f["sha256"] == hashlib.sha256(archive.path(f["file"]).read_bytes()).hexdigest()
    again = stage_mous(archive.mous, source, tmp_path / "work", FAST)
    assert {f["status"] for f in again["files"]} == {"skipped"}


def test_ranges_reuse_one_signature_and_their_connections(tmp_path, seaweedfs, archive, mirror, monkeypatch):
    # One presigned URL per object (not one per range) and kept-alive connections (not one per
    # range): what a far store pays a TLS handshake and a signature for.
    import http.client
    source = S3Source(mirror, seaweedfs.client(), part_size=64 * 1024, parallel_min=128 * 1024, workers=2)
    signed, connects = [], []
    presign = source.client.generate_presigned_url
    monkeypatch.setattr(source.client, "generate_presigned_url", lambda *a, **k: signed.append(1) or presign(*a, **k))
    connect = http.client.HTTPConnection.connect
    monkeypatch.setattr(http.client.HTTPConnection, "connect", lambda self: connects.append(1) or connect(self))
    eb = archive.ebs[0]
    result = stage_eb(archive.mous, eb, source, tmp_path / "work", FAST)
    size = archive.path(archive.asdm_name(eb)).stat().st_size
    assert result["sha256"] == hashlib.sha256(archive.path(archive.asdm_name(eb)).read_bytes()).hexdigest()
    assert size // (64 * 1024) >= 15  # many ranges...
    assert len(signed) == 1 and len(connects) <= 2, (len(signed), len(connects))  # ...one URL, 2 connections


def test_a_resume_from_s3_fetches_only_the_rest_in_ranges(tmp_path, seaweedfs, archive, mirror):
    from alma_regen.staging.sources import S3Source as Src
    source = Src(mirror, seaweedfs.client(), part_size=64 * 1024, parallel_min=128 * 1024, workers=4)
    eb = archive.ebs[0]
    name = archive.asdm_name(eb)
    data = archive.path(name).read_bytes()
    listing = list_mous(source, archive.mous)
    f = listing.asdms[eb]
    body = source.open(f, 300_001, f.etag)
    buf, got = memoryview(bytearray(70_000)), bytearray()
    while n := body.readinto(buf):
        got += buf[:n]
    body.close()
    assert body.start == 300_001 and bytes(got) == data[300_001:]


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


def test_a_kept_alive_connection_the_store_closed_is_replaced_not_a_retry(tmp_path, seaweedfs, archive, mirror,
                                                                           monkeypatch, caplog):
    # Stores close idle keep-alive connections (S3 after a few seconds). A range sent on one of
    # those fails at once; it is sent again on a new connection, not counted as a lost transfer
    # (no "resuming at byte" retry of the whole file from its checkpoint).
    import http.client
    import socket
    source = S3Source(mirror, seaweedfs.client(), part_size=64 * 1024, parallel_min=128 * 1024, workers=2)
    sent, closed = {}, []
    request = http.client.HTTPConnection.request

    def request_on_a_closed_socket(self, *a, **k):
        sent[id(self)] = sent.get(id(self), 0) + 1
        if sent[id(self)] == 3 and self.sock is not None:  # the store closed it after two ranges
            self.sock.shutdown(socket.SHUT_RDWR)
            closed.append(1)
        return request(self, *a, **k)
    monkeypatch.setattr(http.client.HTTPConnection, "request", request_on_a_closed_socket)
    caplog.set_level("WARNING", logger="alma_regen.staging")
    eb = archive.ebs[0]
    result = stage_eb(archive.mous, eb, source, tmp_path / "work", FAST)
    assert result["sha256"] == hashlib.sha256(archive.path(archive.asdm_name(eb)).read_bytes()).hexdigest()
    assert closed and not [r for r in caplog.records if "resuming at byte" in r.getMessage()]
