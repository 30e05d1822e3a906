"""`alma-regen serve-archive`: a local ALMA request handler over a folder, with switchable faults.

    GET /datalink/sync?ID=<MOUS uid>   DataLink VOTable of the MOUS's files (as the ALMA service)
    GET|HEAD /dataPortal/<file>        the file, with Range, If-Range, ETag, Last-Modified, 206/416
    GET /_control                      (with --control) counters: requests and body bytes per file
    POST /_control/faults              (with --control) set faults (JSON, keys of `Faults`)
    POST /_control/reset               (with --control) clear faults and counters

Which files belong to a MOUS: its README, `<project>_<MOUS>_auxiliary.tar`, its product tars
(`<project>_<MOUS>_001_of_001.tar`; Cycle 0's dated `<project>_<date>_001_of_002.tar` name no
MOUS), and every `*.asdm.sdm.tar`: a tar whose name does not say its MOUS belongs to the one
its first members lie under (`member.<MOUS>/`, read from the tar's first headers, so one
folder can hold several MOUSs). An archive without auxiliary tar (Cycles 0-4) is served as
it is: the DataLink answer then lists product tars and ASDMs only.

Only plain file names directly inside ARCHIVE_DIR are served (no '/', no '..', no hidden
files, no symlink leading elsewhere). Faults exist for tests of the stager: a connection
dropped after N body bytes, 503 for the first K requests, a slow body, a wrong
Content-Length header, a file replaced by another between requests, a redirect, and
DataLink answers shaped as the real archive gives them (error rows, readable=false,
bad sizes, duplicate rows, access URLs on another origin). The counters record the
Authorization and Cookie headers each request brought (credential-scoping tests).
A name longer than NAME_MAX is answered 414 and an oversized Range position is
capped: the server answers every request, it never drops the connection on them.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import tarfile
import threading
import time
from dataclasses import asdict, dataclass, field
from email.utils import formatdate

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, quote, unquote, urlsplit

from alma_regen import naming
from alma_regen.errors import PermanentError
from alma_regen.staging.datalink import votable

log = logging.getLogger(__name__)

NAME_MAX = 255  # bytes of a file name: a longer name is answered 414, never looked up
RANGE_DIGITS = 19  # a byte position with more digits is past any file (and past what int() parses)
_MEMBER_RE = re.compile(r"/member\.(uid___A\d{3}_X[0-9a-fA-F]+_X[0-9a-fA-F]+)(?:/|$)")


@dataclass
class Faults:
    """Switchable faults; `file` limits them to one file name, counts to the first N responses."""
    file: str = ""
    drop_after: int = -1  # close the connection after this many body bytes
    drop_count: int = 1  # ... in this many responses (-1: all)
    fail_first: int = 0  # answer 503 to the first K dataPortal requests
    slow_bps: int = 0  # throttle bodies to this many bytes per second
    wrong_length: int = 0  # add this to the Content-Length header ...
    wrong_length_count: int = 1  # ... in this many responses
    change_to: str = ""  # after `change_after` requests, serve this file's bytes as `file`
    change_after: int = 1
    # DataLink answers as the real archive gives them: per file name, columns to override
    # (e.g. {"readable": "false"}, {"error_message": "..."}, {"content_length": "-1"}), rows to
    # add (each a dict of COLUMNS), and the base of access_url (another origin).
    rows: dict = field(default_factory=dict)
    extra_rows: list = field(default_factory=list)
    access_base: str = ""
    redirect_to: str = ""  # answer dataPortal requests with 302 to this ({name}: the file name),
    #                        unless it names this server under the Host the request used


@dataclass
class Counters:
    requests: dict = field(default_factory=dict)  # file -> dataPortal requests
    bytes: dict = field(default_factory=dict)  # file -> body bytes sent
    ranges: list = field(default_factory=list)  # (file, status, first byte) per response
    # (path, Host, Authorization, Cookie) of every request: what a client sent this server
    headers: list = field(default_factory=list)


class ArchiveServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, archive_dir, host: str = "127.0.0.1", port: int = 0, control: bool = False,
                 faults: Optional[Faults] = None):
        self.archive = Path(os.path.realpath(archive_dir))
        if not self.archive.is_dir():
            raise PermanentError(f"serve-archive: {archive_dir} is not a folder")
        self.control = control
        self.faults = faults or Faults()
        self.counters = Counters()
        self.lock = threading.Lock()
        self._mous_cache: dict = {}
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    # --------------------------------------------------------------- files
    def resolve(self, name: str) -> Optional[Path]:
        """The file for a dataPortal name, or None: never anything outside the archive folder."""
        if not name or "/" in name or "\\" in name or "\0" in name or name.startswith("."):
            return None
        if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
            return None
        path = self.archive / name
        try:
            real = Path(os.path.realpath(path))
            if real.parent != self.archive or not real.is_file():
                return None
        except (OSError, ValueError):  # ENAMETOOLONG, undecodable names: not one of ours
            return None
        return real

    def tar_mous(self, path: Path) -> str:
        st = path.stat()
        key = (path.name, st.st_size, st.st_mtime_ns)
        if key not in self._mous_cache:
            mous = ""
            try:
                with tarfile.open(path, "r:") as tar:
                    first = tar.next()
                    for m in [first] + [tar.next() for _ in range(8)]:  # skip prefix dirs
                        found = _MEMBER_RE.search("/" + m.name) if m else None
                        if found:
                            mous = found[1]
                            break
            except (tarfile.TarError, OSError, AttributeError):
                pass
            self._mous_cache[key] = mous
        return self._mous_cache[key]

    def mous_files(self, mous: str) -> list:
        m = naming.uid_to_file(mous)
        out = []
        for p in sorted(self.archive.iterdir()):
            if not p.is_file() or p.name.startswith("."):
                continue
            n = p.name
            if n == naming.readme_name(mous):
                out.append((p, "#documentation", "text/plain", "README of the MOUS"))
            elif n.endswith(f"_{m}_auxiliary.tar"):
                out.append((p, "#auxiliary", "application/x-tar", "auxiliary files"))
            elif re.search(rf"_{m}_\d{{3}}_of_\d{{3}}\.tar$", n):
                out.append((p, "#this", "application/x-tar", "product files"))
            elif re.fullmatch(r"\d{4}\.\d\.\d{5}\.[A-Z]+_\d{4}-\d{2}-\d{2}_\d{3}_of_\d{3}\.tar", n) \
                    and self.tar_mous(p) == m:
                out.append((p, "#this", "application/x-tar", "product files (Cycle 0, dated)"))
            elif n.endswith(".asdm.sdm.tar") and self.tar_mous(p) == m:
                out.append((p, "#progenitor", "application/x-tar", "raw ASDM"))
        return out

    # --------------------------------------------------------------- faults
    def set_faults(self, **kw) -> None:
        with self.lock:
            self.faults = Faults(**kw)

    def reset(self) -> None:
        with self.lock:
            self.faults = Faults()
            self.counters = Counters()

    def stats(self) -> dict:
        with self.lock:
            return {"faults": asdict(self.faults), **asdict(self.counters)}


def _position(digits: str) -> int:
    """A Range byte position; one too long for int() (and for any file) is capped past every file."""
    return int(digits) if len(digits) <= RANGE_DIGITS else 10 ** RANGE_DIGITS


class _Handler(BaseHTTPRequestHandler):
    server: ArchiveServer
    protocol_version = "HTTP/1.1"
    server_version = "alma-regen-serve-archive"

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)

    # --------------------------------------------------------------- routing
    def do_HEAD(self):
        self._route(head=True)

    def do_GET(self):
        self._route(head=False)

    def do_POST(self):
        u = urlsplit(self.path)
        if not self.server.control or not u.path.startswith("/_control/"):
            return self._plain(404, "not found")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b"{}"
        try:
            if u.path == "/_control/faults":
                self.server.set_faults(**json.loads(body or b"{}"))
            elif u.path == "/_control/reset":
                self.server.reset()
            else:
                return self._plain(404, "not found")
        except (TypeError, ValueError) as exc:
            return self._plain(400, f"bad fault settings: {exc}")
        self._json(self.server.stats())

    def _route(self, head: bool):
        with self.server.lock:
            self.server.counters.headers.append((self.path[:300], self.headers.get("Host"),
                                                 self.headers.get("Authorization"), self.headers.get("Cookie")))
        self._answered = False
        try:
            self._dispatch(head)
        except ConnectionError:
            raise  # the client went away (handle_one_request): nothing to answer
        except Exception:  # a bug must cost one request a 500, never a dropped connection
            log.exception("serve-archive: %s %s", self.command, self.path[:200])
            if self._answered:
                raise
            self._plain(500, "internal error")
            self.close_connection = True

    def send_response(self, code, message=None):
        self._answered = True
        super().send_response(code, message)

    def _dispatch(self, head: bool):
        u = urlsplit(self.path)
        if u.path == "/datalink/sync":
            return self._datalink(parse_qs(u.query).get("ID", [""])[0], head)
        if u.path.startswith("/dataPortal/"):
            return self._file(unquote(u.path[len("/dataPortal/"):]), head)
        if u.path == "/_control" and self.server.control:
            return self._json(self.server.stats())
        self._plain(404, "not found")

    def _plain(self, status: int, text: str, extra: Optional[dict] = None):
        data = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _json(self, obj):
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    # --------------------------------------------------------------- DataLink
    def _datalink(self, mous: str, head: bool):
        host = self.headers.get("Host") or "%s:%d" % self.server.server_address[:2]
        try:
            files = self.server.mous_files(mous)
        except PermanentError:
            files = None
        with self.server.lock:
            f = self.server.faults
            overrides, extra, base = dict(f.rows), list(f.extra_rows), f.access_base
        base = base or f"http://{host}"
        if not files:
            rows = [{"ID": mous, "error_message": f"NotFoundFault: no files for {mous!r} in this archive"}]
        else:
            rows = [dict({"ID": mous, "access_url": f"{base}/dataPortal/{quote(p.name)}",
                          "semantics": sem, "description": desc, "content_type": ctype,
                          "content_length": p.stat().st_size, "readable": "true"}, **overrides.get(p.name, {}))
                    for p, sem, ctype, desc in files]
        rows += extra
        data = votable(mous, rows)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-votable+xml;content=datalink")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    # --------------------------------------------------------------- files
    def _file(self, name: str, head: bool):
        srv = self.server
        if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
            return self._plain(414, f"file name longer than {NAME_MAX} bytes")
        path = srv.resolve(name)
        with srv.lock:
            f = srv.faults
            applies = not f.file or f.file == name
            n = srv.counters.requests.get(name, 0) + 1
            srv.counters.requests[name] = n
            total_requests = sum(srv.counters.requests.values())
            fail = applies and f.fail_first and (n if f.file else total_requests) <= f.fail_first
            if applies and f.change_to and n > f.change_after:
                path = srv.resolve(f.change_to)
            drop = -1
            if applies and f.drop_after >= 0 and f.drop_count != 0:
                drop = f.drop_after
                if f.drop_count > 0:
                    f.drop_count -= 1
            wrong = 0
            if applies and f.wrong_length and f.wrong_length_count != 0:
                wrong = f.wrong_length
                if f.wrong_length_count > 0:
                    f.wrong_length_count -= 1
            slow = f.slow_bps if applies else 0
            redirect = f.redirect_to if applies else ""
        if redirect and urlsplit(redirect).netloc != self.headers.get("Host", ""):  # not to itself
            return self._plain(302, "moved", {"Location": redirect.replace("{name}", quote(name))})
        if path is None:
            return self._plain(404, f"no such file: {name}")
        if fail:
            return self._plain(503, "service unavailable (injected fault)", {"Retry-After": "0"})
        st = path.stat()
        size = st.st_size
        etag = f'"{size:x}-{st.st_mtime_ns:x}"'
        last_modified = formatdate(st.st_mtime, usegmt=True)
        start, end, status = 0, size, 200
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and (not if_range or if_range in (etag, last_modified)):
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if m and (m[1] or m[2]):
                if m[1]:
                    start = _position(m[1])
                    end = min(_position(m[2]) + 1, size) if m[2] else size
                else:  # suffix range: the last N bytes
                    start = max(size - _position(m[2]), 0)
                if start >= size or start >= end:
                    return self._plain(416, "range not satisfiable", {"Content-Range": f"bytes */{size}"})
                status = 206
        length = end - start
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if name.endswith(".txt") else "application/x-tar")
        self.send_header("Content-Length", str(max(length + wrong, 0)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", last_modified)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        if wrong:
            self.close_connection = True
        self.end_headers()
        with srv.lock:
            srv.counters.ranges.append((name, status, start))
        if head:
            return
        self._body(path, name, start, length, drop, slow)

    def _count(self, name: str, n: int):
        with self.server.lock:
            self.server.counters.bytes[name] = self.server.counters.bytes.get(name, 0) + n

    def _body(self, path: Path, name: str, start: int, length: int, drop: int, slow: int):
        limit = length if drop < 0 else min(drop, length)
        with open(path, "rb") as fh:
            if not slow and limit == length:
                # The fast path: zero-copy sendfile, in pieces so the counters move as it goes.
                offset, left = start, length
                while left:
                    sent = self.connection.sendfile(fh, offset, min(left, 64 << 20))
                    if not sent:
                        break
                    offset, left = offset + sent, left - sent
                    self._count(name, sent)
                return
            fh.seek(start)
            sent, t0 = 0, time.monotonic()
            piece = 64 << 10 if slow else 1 << 20
            while sent < limit:
                data = fh.read(min(piece, limit - sent))
                if not data:
                    break
                self.wfile.write(data)
                sent += len(data)
                self._count(name, len(data))
                if slow:
                    ahead = sent / slow - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
        if limit < length:  # the injected drop: cut the connection mid-body
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True  # the client went away: nothing to answer


def serve(archive_dir, host: str = "127.0.0.1", port: int = 0, control: bool = False,
          faults: Optional[Faults] = None, ready=None) -> None:
    """Run the server until interrupted; `ready(url)` is called once it listens."""
    srv = ArchiveServer(archive_dir, host, port, control, faults)
    print(f"serving {srv.archive} at {srv.url}", flush=True)
    if ready:
        ready(srv.url)
    try:
        srv.serve_forever(poll_interval=0.2)
    finally:
        srv.server_close()

