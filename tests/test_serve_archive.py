"""serve-archive: DataLink, ranges, validators, faults, and never anything outside the folder."""
from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import archive_builder as ab
import pytest

from alma_regen.staging.datalink import parse_votable


@pytest.fixture
def archive(tmp_path):
    return ab.build_archive(tmp_path / "archive", n_binaries=2, binary_size=50_000)


def request(url, method="GET", path="/", headers=None):
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request(method, path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r, body


def test_datalink_lists_every_file_of_the_mous_with_sizes_and_semantics(archive, archive_server):
    srv = archive_server(archive.dir)
    r, body = request(srv.url, path=f"/datalink/sync?ID={archive.mous}")
    assert r.status == 200
    rows = {f.name: f for f in parse_votable(body, "test")}
    assert {n: f.semantics for n, f in rows.items()} == archive.files
    for name, f in rows.items():
        assert f.size == archive.path(name).stat().st_size
        assert f.url == f"{srv.url}/dataPortal/{name}"


def test_datalink_of_an_unknown_mous_reports_an_error_row(archive, archive_server):
    srv = archive_server(archive.dir)
    r, body = request(srv.url, path="/datalink/sync?ID=uid://A001/X9/X9")
    assert r.status == 200 and b"NotFoundFault" in body


def test_range_if_range_head_and_416(archive, archive_server):
    srv = archive_server(archive.dir)
    name = archive.asdm_name(archive.ebs[0])
    data = archive.path(name).read_bytes()
    path = f"/dataPortal/{name}"
    r, body = request(srv.url, "HEAD", path)
    assert r.status == 200 and body == b"" and int(r.getheader("Content-Length")) == len(data)
    etag, lm = r.getheader("ETag"), r.getheader("Last-Modified")
    assert etag and lm and r.getheader("Accept-Ranges") == "bytes"
    r, body = request(srv.url, path=path, headers={"Range": "bytes=1000-"})
    assert r.status == 206 and body == data[1000:]
    assert r.getheader("Content-Range") == f"bytes 1000-{len(data) - 1}/{len(data)}"
    r, body = request(srv.url, path=path, headers={"Range": "bytes=10-19"})
    assert (r.status, body) == (206, data[10:20])
    r, body = request(srv.url, path=path, headers={"Range": "bytes=-5"})
    assert (r.status, body) == (206, data[-5:])
    for validator in (etag, lm):
        r, body = request(srv.url, path=path, headers={"Range": "bytes=100-", "If-Range": validator})
        assert (r.status, body) == (206, data[100:])
    r, body = request(srv.url, path=path, headers={"Range": "bytes=100-", "If-Range": '"stale"'})
    assert (r.status, body) == (200, data)  # the file "changed": the whole new file
    r, _ = request(srv.url, path=path, headers={"Range": f"bytes={len(data)}-"})
    assert r.status == 416 and r.getheader("Content-Range") == f"bytes */{len(data)}"


def test_never_serves_outside_the_archive_folder(tmp_path, archive, archive_server):
    (tmp_path / "secret.txt").write_text("TOPSECRET-CONTENT")
    os.symlink(tmp_path / "secret.txt", archive.dir / "link.txt")
    (archive.dir / ".hidden").write_text("hidden")
    srv = archive_server(archive.dir)
    for path in ["/dataPortal/../secret.txt", "/dataPortal/..%2Fsecret.txt", "/dataPortal/%2E%2E/secret.txt",
                 f"/dataPortal/{tmp_path}/secret.txt", f"/dataPortal/%2F{str(tmp_path)[1:]}%2Fsecret.txt",
                 "/dataPortal/link.txt", "/dataPortal/.hidden", "/dataPortal/", "/dataPortal/..",
                 "/../secret.txt", "/secret.txt"]:
        r, body = request(srv.url, path=path)
        assert r.status == 404, path
        assert b"TOPSECRET-CONTENT" not in body and body != b"hidden"


def test_503_for_the_first_k_requests(archive, archive_server):
    srv = archive_server(archive.dir)
    srv.faults(fail_first=2)
    path = f"/dataPortal/{archive.asdm_name(archive.ebs[0])}"
    assert [request(srv.url, path=path)[0].status for _ in range(3)] == [503, 503, 200]


def test_drop_after_n_bytes_and_wrong_length(archive, archive_server):
    srv = archive_server(archive.dir)
    name = archive.asdm_name(archive.ebs[0])
    srv.faults(file=name, drop_after=1000)
    u = urlsplit(srv.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("GET", f"/dataPortal/{name}")
    r = conn.getresponse()
    with pytest.raises(http.client.IncompleteRead) as exc:
        r.read()
    assert len(exc.value.partial) == 1000
    srv.faults(file=name, wrong_length=-100)
    r, body = request(srv.url, path=f"/dataPortal/{name}")
    assert int(r.getheader("Content-Length")) == archive.path(name).stat().st_size - 100


def test_changed_file_between_requests(archive, archive_server):
    srv = archive_server(archive.dir)
    a, b = archive.asdm_name(archive.ebs[0]), archive.asdm_name(archive.ebs[1])
    srv.faults(file=a, change_to=b, change_after=1)
    r1, body1 = request(srv.url, path=f"/dataPortal/{a}")
    r2, body2 = request(srv.url, path=f"/dataPortal/{a}")
    assert body1 == archive.path(a).read_bytes() and body2 == archive.path(b).read_bytes()
    assert r1.getheader("ETag") != r2.getheader("ETag")


def test_cli_serves_with_faults_from_flags(archive):
    proc = subprocess.Popen([sys.executable, "-m", "alma_regen.cli", "serve-archive", str(archive.dir),
                             "--port", "0", "--fail-first", "1", "--control"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://[\d.]+:\d+", line)[0]
        path = f"/dataPortal/{archive.asdm_name(archive.ebs[0])}"
        assert request(url, path=path)[0].status == 503
        assert request(url, path=path)[0].status == 200
        r, body = request(url, path="/_control")
        assert json.loads(body)["requests"] == {archive.asdm_name(archive.ebs[0]): 2}
    finally:
        proc.terminate()
        proc.wait(10)


def test_cli_error_for_a_missing_folder(tmp_path):
    r = subprocess.run([sys.executable, "-m", "alma_regen.cli", "serve-archive", str(tmp_path / "nope"),
                        "--port", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "is not a folder" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("path, headers, status", [
    ("/dataPortal/" + "a" * 5000, {}, 414),  # longer than any file name: 414, not a dropped connection
    (None, {"Range": "bytes=" + "9" * 5000 + "-"}, 416),  # past any file
    (None, {"Range": "bytes=0-" + "9" * 5000}, 206),  # to the end (RFC 9110: a last-pos past the end)
    (None, {"Range": "bytes=-" + "9" * 5000}, 206),  # a suffix longer than the file: all of it
    ("/datalink/sync?ID=" + "u" * 5000, {}, 200),  # an unknown MOUS: an error row
])
def test_oversized_names_and_ranges_get_a_clean_answer(archive, archive_server, path, headers, status):
    srv = archive_server(archive.dir)
    name = archive.asdm_name(archive.ebs[0])
    r, body = request(srv.url, path=path or f"/dataPortal/{name}", headers=headers)
    assert r.status == status
    if status == 206:
        assert body == archive.path(name).read_bytes()
    # The server still answers on a new connection.
    assert request(srv.url, "HEAD", f"/dataPortal/{name}")[0].status == 200


def test_datalink_answers_can_be_shaped_as_the_archive_gives_them(archive, archive_server):
    from alma_regen.staging.errors import LoginNeededError
    srv = archive_server(archive.dir)
    name = archive.asdm_name(archive.ebs[0])
    srv.faults(rows={name: {"readable": "false"}})
    r, body = request(srv.url, path=f"/datalink/sync?ID={archive.mous}")
    with pytest.raises(LoginNeededError):
        parse_votable(body, "test")
