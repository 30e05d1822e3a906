"""Credentials stay with their origin; unsafe URLs are refused (issue 11, items 3 and 8).

Two real serve-archive servers on two ports of 127.0.0.1 record the Authorization and
Cookie headers each request brought (`/_control` counters). The source is the first
one, with a password and a login cookie; the second one (another port of the same
host: another origin) must never see them, whether it is reached through a redirect or
named by the DataLink listing. `localhost` on the first server's port is another host:
the cookie must not follow a redirect there either.
"""
from __future__ import annotations

import base64
import json

import archive_builder as ab
import pytest

from alma_regen.errors import PermanentError
from alma_regen.staging import HttpSource, StageOptions, member_path, stage_mous
from alma_regen.staging.errors import UnsafeUrlError

FAST = StageOptions(backoff=0.01, max_attempts=3, progress_interval=0.5)
PASSWORD = "pi-password-123"
COOKIE = "ALMA_SESSION=secret-session-cookie"
BASIC = "Basic " + base64.b64encode(f"pi:{PASSWORD}".encode()).decode()


@pytest.fixture
def archive(tmp_path):
    return ab.build_archive(tmp_path / "archive", n_binaries=2, binary_size=50_000)


@pytest.fixture
def two(archive, archive_server):
    """(home, other): the source's server and a second one on another port of the same host."""
    return archive_server(archive.dir), archive_server(archive.dir)


def credentials_seen(srv) -> tuple:
    """(requests that brought the password, requests that brought the cookie) at this server."""
    headers = srv.stats()["headers"]
    return ([p for p, _, auth, _ in headers if auth and PASSWORD in base64.b64decode(auth.split()[-1]).decode()],
            [p for p, _, _, cookie in headers if cookie and "secret-session-cookie" in cookie])


def source(home) -> HttpSource:
    host_port = home.url.split("://", 1)[1]
    return HttpSource(f"http://pi:{PASSWORD}@{host_port}", cookie=COOKIE)


def test_a_redirect_to_another_port_gets_neither_password_nor_cookie(tmp_path, archive, two):
    home, other = two
    # Every file request at home is redirected to the other server (same host, other port).
    home.faults(redirect_to=other.url + "/dataPortal/{name}")
    stage_mous(archive.mous, source(home), tmp_path / "work", FAST)
    assert ab.staged_member(member_path(tmp_path / "work", archive.mous)) == ab.expected_member(archive)
    # Expected decision: home (the listing, the first hop) gets both; the other origin gets none.
    auth_home, cookie_home = credentials_seen(home)
    assert auth_home and cookie_home
    assert other.stats()["requests"], "the redirect was not followed"
    assert credentials_seen(other) == ([], [])


def test_a_listing_naming_another_origin_gets_no_credentials(tmp_path, archive, two):
    home, other = two
    home.faults(access_base=other.url)  # the DataLink access_urls point at the other server
    stage_mous(archive.mous, source(home), tmp_path / "work", FAST)
    assert sorted(other.stats()["requests"]) == sorted(archive.files)  # every file came from there
    assert credentials_seen(other) == ([], [])
    auth_home, cookie_home = credentials_seen(home)
    assert [p.split("?")[0] for p in auth_home] == ["/datalink/sync"] and len(cookie_home) == 1


def test_the_cookie_does_not_follow_a_redirect_to_another_host(tmp_path, archive, archive_server):
    home = archive_server(archive.dir)
    port = home.url.rsplit(":", 1)[1]
    # Same server, but named `localhost`: another host name, so another origin.
    home.faults(redirect_to=f"http://localhost:{port}/dataPortal/{{name}}")
    src = HttpSource(home.url, cookie=COOKIE)
    stage_mous(archive.mous, src, tmp_path / "work", FAST)
    headers = home.stats()["headers"]
    # Expected: requests naming 127.0.0.1 (the listing, each file's first hop) carry the
    # cookie; the hops to `localhost` carry none.
    to_localhost = [(p, c) for p, host, _, c in headers if host == f"localhost:{port}"]
    assert to_localhost, "the redirect to localhost was not followed"
    assert [p for p, c in to_localhost if c] == []
    assert all(c == COOKIE for p, host, _, c in headers
               if host != f"localhost:{port}" and not p.startswith("/_control"))


def test_origin_is_scheme_host_and_port():
    from alma_regen.staging.sources import origin
    assert origin("https://Archive.example.org/x") == ("https", "archive.example.org", 443)
    assert origin("https://archive.example.org:443/y") == origin("https://archive.example.org/x")
    assert origin("http://archive.example.org/x") != origin("https://archive.example.org/x")
    assert origin("https://archive.example.org:8443/x") != origin("https://archive.example.org/x")


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1:70/x"])
def test_a_redirect_to_another_scheme_is_refused_in_one_line(tmp_path, archive, archive_server, location):
    home = archive_server(archive.dir)
    home.faults(redirect_to=location)
    with pytest.raises(UnsafeUrlError, match="refused URL") as exc:
        stage_mous(archive.mous, HttpSource(home.url), tmp_path / "work", FAST)
    assert "\n" not in str(exc.value)


def test_a_file_url_in_the_listing_is_refused_before_any_download(tmp_path, archive, archive_server):
    home = archive_server(archive.dir)
    readme = next(n for n, s in archive.files.items() if s == "#documentation")
    home.faults(rows={readme: {"access_url": "file:///etc/passwd"}})
    with pytest.raises(UnsafeUrlError, match="file:///etc/passwd"):
        stage_mous(archive.mous, HttpSource(home.url), tmp_path / "work", FAST)
    assert not home.stats()["requests"]  # nothing was fetched
    assert not (tmp_path / "work" / "passwd").exists()


def test_the_hook_gives_the_connection_credentials_only_to_its_own_origin(archive, two, monkeypatch):
    from alma_regen.airflow.hooks.archive import archive_source
    home, other = two
    port = int(home.url.rsplit(":", 1)[1])
    monkeypatch.setenv("AIRFLOW_CONN_ALMA_REQUEST_HANDLER", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http", "login": "pi",
         "password": PASSWORD, "extra": {"cookie": COOKIE}}))
    # A DAG run's `source` param naming another server: anonymous there.
    archive_source(other.url).list_files(archive.mous)
    assert other.stats()["requests"] == {} and other.stats()["headers"]
    assert credentials_seen(other) == ([], [])
    # The connection's own origin, named explicitly: the credentials go.
    archive_source(home.url + "/").list_files(archive.mous)
    assert credentials_seen(home) != ([], [])


def test_a_bad_source_url_is_one_line():
    with pytest.raises(PermanentError, match="not a request handler URL"):
        HttpSource("http://")
