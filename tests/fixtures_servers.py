"""Fixtures for real servers: SeaweedFS (S3) and the request handler (serve-archive)."""
from __future__ import annotations

import json
import os
import threading
import urllib.request
from pathlib import Path

import pytest

from alma_regen.errors import PermanentError
from alma_regen_dev.local_s3 import S3Server, free_port  # re-exported for the tests
from alma_regen_dev.local_s3 import seaweedfs_server as _seaweedfs_server
from alma_regen_dev.local_s3 import weed_binary as _weed_binary

# What test modules import from here: helpers only (the fixtures reach them through pytest_plugins).
__all__ = ["ArchiveHandle", "S3Server", "cli_env", "free_port", "seaweedfs_server", "start_archive_server",
           "stop_archive_server", "weed_binary"]


def weed_binary() -> str:
    try:
        return _weed_binary()
    except PermanentError as exc:
        pytest.skip(str(exc))


def seaweedfs_server(root: Path, weed: str | None = None):
    return _seaweedfs_server(root, weed or weed_binary())


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """`weed mini` on 127.0.0.1 with random free ports and a temporary folder, stopped afterwards."""
    with seaweedfs_server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


class ArchiveHandle:
    """A running serve-archive; faults and counters go through its /_control endpoint."""

    def __init__(self, server):
        self.server = server
        self.url = server.url
        self.dir = server.archive

    def _call(self, path: str, body=None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data is not None else "GET")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def faults(self, **kw) -> dict:
        return self._call("/_control/faults", kw)

    def reset(self) -> dict:
        return self._call("/_control/reset", {})

    def stats(self) -> dict:
        return self._call("/_control")

    def bytes_sent(self, name: str) -> int:
        return self.stats()["bytes"].get(name, 0)


def start_archive_server(archive_dir) -> ArchiveHandle:
    """A real threaded serve-archive on a free port; stop_archive_server(handle) stops it."""
    from alma_regen_dev.serve_archive import ArchiveServer
    srv = ArchiveServer(archive_dir, "127.0.0.1", 0, control=True)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    return ArchiveHandle(srv)


def stop_archive_server(handle: ArchiveHandle) -> None:
    handle.server.shutdown()
    handle.server.server_close()


@pytest.fixture
def archive_server():
    """Factory: start(archive_dir) -> ArchiveHandle; a real threaded HTTP server on a free port."""
    handles = []

    def start(archive_dir) -> ArchiveHandle:
        handles.append(start_archive_server(archive_dir))
        return handles[-1]

    yield start
    for handle in handles:
        stop_archive_server(handle)


def cli_env(**extra) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.update(extra)
    return env
