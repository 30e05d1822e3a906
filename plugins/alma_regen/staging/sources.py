"""Where archive files come from: the request handler (HTTP) or an S3 mirror, behind one interface.

A source lists a MOUS's files (`list_files`) and opens a byte range of one
(`open(file, start, etag, last_modified)` -> `Body`, read with `readinto(buffer)`
into the caller's buffers: no bytes object per read, the bytes are copied once from
the socket to where they are hashed and written). A Body whose `start` is 0 when a
later offset was asked means the remote file changed (If-Range/If-Match failed):
the caller must restart from scratch.

Errors are mapped once, here, onto the two families: network faults, 5xx and
throttling are TransientError; 404, 401/403 and other 4xx are PermanentError.
Credentials are given by the caller (the Airflow hooks build them from the
`alma_request_handler` / `alma_archive_s3` Connections; the CLI from the URL
and the environment) so nothing here needs Airflow.
"""
from __future__ import annotations

import base64
import http.client
import logging
import re
import select
import socket
import ssl
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Optional
from urllib.parse import quote, unquote, urljoin, urlsplit

from .. import s3
from ..errors import PermanentError, TransientError
from .datalink import RemoteFile, check_url, parse_votable
from .errors import AccessDeniedError, NotFoundError, SourceChangedError

log = logging.getLogger(__name__)



_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple:
    """(scheme, host, port) of a URL, the default port filled in: what credentials are scoped to."""
    u = urlsplit(url)
    scheme = u.scheme.lower()
    try:
        port = u.port
    except ValueError:
        port = None
    return scheme, (u.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


class Body:
    """The bytes of one file from `start` to its end (`length` of them), with the file's identity.

    `readinto(view)` puts what has arrived (at least one byte, at most len(view)) into the
    caller's buffer and returns how many; 0 once every byte was read and checked (the body is
    exactly the listing's size, never more). Errors are TransientError (the caller resumes at
    the next byte) or SourceChangedError. `close()` may be called from another thread: it wakes
    a reader blocked on the network.
    """

    def __init__(self, reader, start: int, length: int, etag: str = "", last_modified: str = ""):
        self._reader, self.start, self.length = reader, start, length
        self.etag, self.last_modified = etag, last_modified

    def readinto(self, view) -> int:
        return self._reader.readinto(view)

    def ready(self) -> bool:
        """True when readinto() would not wait for the network (bytes have arrived, or the end)."""
        return self._reader.ready()

    def close(self) -> None:
        self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _retry_after(value: Optional[str]) -> float:
    try:
        return min(float(value), 60.0)
    except (TypeError, ValueError):
        return 0.0


class HttpError(TransientError):
    """A retryable HTTP answer (5xx, 429); carries Retry-After."""

    def __init__(self, message: str, retry_after: float = 0.0):
        super().__init__(message)
        self.retry_after = retry_after


def _status_error(status: int, reason: str, what: str, retry_after: Optional[str] = None):
    msg = f"{what}: HTTP {status} {reason}".rstrip()
    if status in (404, 410):
        return NotFoundError(msg)
    if status in (401, 403):
        return AccessDeniedError(msg + " (login cookie or credentials of the request handler?)")
    if status == 429 or status >= 500:
        return HttpError(msg, _retry_after(retry_after))
    return PermanentError(msg)


class HttpSource:
    """The ALMA request handler: DataLink listing plus /dataPortal/<file> downloads."""

    kind = "http"

    def __init__(self, root: str, *, auth: Optional[tuple] = None, cookie: str = "",
                 timeout: float = 60.0):
        u = urlsplit(root)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise PermanentError(f"not a request handler URL: {root!r}")
        if u.username and not auth:
            auth = (unquote(u.username), unquote(u.password or ""))
        netloc = u.hostname + (f":{u.port}" if u.port else "")
        self.root = f"{u.scheme}://{netloc}{u.path.rstrip('/')}"
        # Credentials belong to the root's origin (scheme, host, port) only, as browsers and
        # requests/urllib3 scope them: a listing or a redirect naming another origin (another
        # port of the same host, http instead of https) gets neither the password nor the cookie.
        self._origin = origin(self.root)
        self.timeout = timeout
        self._headers = {"User-Agent": "alma-regen-staging"}
        if auth:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            self._auth_header = f"Basic {token}"
        else:
            self._auth_header = ""
        if cookie:
            self._headers["Cookie"] = cookie

    def describe(self) -> str:
        return self.root

    def _headers_for(self, url: str, extra: dict) -> dict:
        h = dict(self._headers, **extra)
        if origin(url) == self._origin:
            if self._auth_header:
                h["Authorization"] = self._auth_header
        else:
            h.pop("Cookie", None)
        return h

    def _request(self, method: str, url: str, headers: dict, what: str):
        for _ in range(6):
            check_url(url, what)  # a listing's access_url or a redirect's Location: http(s) only
            u = urlsplit(url)
            cls = http.client.HTTPSConnection if u.scheme.lower() == "https" else http.client.HTTPConnection
            conn = cls(u.hostname, u.port, timeout=self.timeout)
            h = self._headers_for(url, headers)
            try:
                conn.request(method, (u.path or "/") + (f"?{u.query}" if u.query else ""), headers=h)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise TransientError(f"{what}: {type(exc).__name__}: {exc}") from None
            location = resp.getheader("Location")
            if resp.status in (301, 302, 303, 307, 308) and location:
                conn.close()
                url = urljoin(url, location.strip())
                continue
            return conn, resp
        raise PermanentError(f"{what}: too many redirects")

    def list_files(self, mous: str) -> list[RemoteFile]:
        url = f"{self.root}/datalink/sync?ID={quote(mous, safe='')}"
        conn, resp = self._request("GET", url, {}, f"DataLink of {mous}")
        try:
            if resp.status != 200:
                raise _status_error(resp.status, resp.reason, f"DataLink of {mous} ({url})",
                                    resp.getheader("Retry-After"))
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise TransientError(f"DataLink of {mous}: {exc}") from None
        finally:
            conn.close()
        return parse_votable(data, url)

    def validators(self, f: RemoteFile) -> tuple:
        """(ETag, Last-Modified) of the file now, from a HEAD request."""
        conn, resp = self._request("HEAD", f.url, {}, f.name)
        try:
            resp.read()
            if resp.status != 200:
                raise _status_error(resp.status, resp.reason, f"{f.name} ({f.url})", resp.getheader("Retry-After"))
            return resp.getheader("ETag") or "", resp.getheader("Last-Modified") or ""
        finally:
            conn.close()

    def open(self, f: RemoteFile, start: int = 0, etag: str = "", last_modified: str = "") -> Body:
        headers = {}
        if start:
            headers["Range"] = f"bytes={start}-"
            if etag or last_modified:
                # If the file changed, the server answers 200 with the whole new file.
                headers["If-Range"] = etag or last_modified
        conn, resp = self._request("GET", f.url, headers, f.name)
        try:
            served = self._check(resp, f, start)
        except BaseException:
            conn.close()
            raise
        return Body(_Stream(conn, resp, f, served), served, f.size - served, resp.getheader("ETag") or "",
                    resp.getheader("Last-Modified") or "")

    def _check(self, resp, f: RemoteFile, start: int) -> int:
        if resp.status == 206:
            m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.getheader("Content-Range") or "")
            if not m or int(m[1]) != start:
                raise TransientError(f"{f.name}: server answered another range "
                                     f"({resp.getheader('Content-Range')!r} for bytes={start}-)")
            if m[3] != "*" and int(m[3]) != f.size:
                raise SourceChangedError(f"{f.name}: now {m[3]} bytes, the listing said {f.size}")
            return start
        if resp.status == 200:
            # From the start: a first request, or the file changed (If-Range failed). A changed
            # file of another size makes the listing stale: a retry must list again.
            length = resp.getheader("Content-Length")
            if start and length and length.isdigit() and int(length) != f.size:
                raise SourceChangedError(f"{f.name}: changed on the server, now {length} bytes, "
                                         f"the listing said {f.size}")
            return 0
        if resp.status == 416:
            raise SourceChangedError(f"{f.name}: range bytes={start}- not satisfiable (file shrank?)")
        raise _status_error(resp.status, resp.reason, f"{f.name} ({f.url})", resp.getheader("Retry-After"))


def _close_conn(conn) -> None:
    """Close a connection from another thread: shutdown() wakes a reader blocked in recv(),
    close() alone may not."""
    try:
        if conn.sock is not None:
            conn.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()


class _Stream:
    """The rest of a file from one response, from byte `served` to the listing's size.

    Exactly that many bytes are read: the listing's content_length is the size truth, not the
    response's Content-Length (a server can get that wrong). Each read is what has arrived
    (one recv at most), so a slow link still feeds the untar and the checkpoints promptly.
    """

    def __init__(self, conn, resp, f: RemoteFile, served: int):
        self.conn, self.resp, self.f = conn, resp, f
        self.offset, self.end = served, f.size
        self._poll = None

    def ready(self) -> bool:
        sock = self.conn.sock
        if sock is None or self.offset >= self.end:
            return True  # readinto says what it is
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted bytes wait in the TLS layer
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(sock, select.POLLIN)
        return bool(self._poll.poll(0))

    def readinto(self, view) -> int:
        left = self.end - self.offset
        if left <= 0:
            return 0
        try:
            n = _readinto1(self.resp, view[:left])
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise TransientError(f"{self.f.name}: connection lost after byte {self.offset}: "
                                 f"{type(exc).__name__}") from None
        if not n:
            raise TransientError(f"{self.f.name}: response ended at byte {self.offset} of {self.f.size}")
        self.offset += n
        if self.offset >= self.end:
            _check_no_more(self.resp, self.f, self.offset)
        return n

    def close(self) -> None:
        _close_conn(self.conn)


def _readinto1(resp, view) -> int:
    """One read of a response body into `view`: what has arrived, at most len(view) bytes.

    http.client has read1() (a new bytes object per read) but no readinto1(): for a body of
    known length the buffered socket reader's readinto1 fills our buffer directly, and the
    response's remaining length is kept as http.client keeps it.
    """
    fp = resp.fp
    if resp.chunked or resp.length is None or fp is None or not hasattr(fp, "readinto1"):
        data = resp.read1(len(view))
        view[:len(data)] = data
        return len(data)
    n = min(len(view), resp.length)
    if n <= 0:
        return 0
    got = fp.readinto1(view[:n])
    resp.length -= got
    return got


def _check_no_more(resp, f: RemoteFile, offset: int) -> None:
    """Refuse a body longer than the listing said (checked before the last chunk is handed on).

    Reading exactly the listing's size would otherwise keep the first bytes of a longer
    file, e.g. a README cut short without a word. A Content-Length header that merely
    overstates (the body ends where the listing says) is not an error: the probe then
    finds the end of the response or a closed connection.
    """
    if resp.length == 0 or resp.isclosed():
        return
    sock = getattr(getattr(resp, "fp", None), "raw", None)
    try:
        # A server that keeps the connection open without sending more must not hold us for
        # the whole read timeout: a short wait is enough to see bytes that were sent.
        sock = getattr(sock, "_sock", None)
        if sock is not None:
            sock.settimeout(2.0)
        extra = resp.read1(1)
    except (OSError, http.client.HTTPException, ValueError):
        return
    if extra:
        raise SourceChangedError(f"{f.name}: the server sent more than the listing's {f.size} bytes "
                                 f"(content_length); the file changed or the listing is wrong")


# The one table of S3 error codes is alma_regen.s3.kind; staging tells more kinds apart
# than the other steps (a missing file, a changed one, a login problem).
_S3_KINDS = {"missing": NotFoundError, "changed": SourceChangedError, "denied": AccessDeniedError,
             "transient": TransientError, "permanent": PermanentError}


def _s3_error(exc: Exception, what: str) -> Exception:
    if not isinstance(getattr(exc, "response", None), dict):
        # botocore raises many unrelated classes for a network fault; none of them is final
        return TransientError(f"{what}: {type(exc).__name__}: {exc}")
    return _S3_KINDS[s3.kind(exc)](s3.describe(exc, what))


def _s3_call(fn, what: str, **kw):
    try:
        return fn(**kw)
    except Exception as exc:  # botocore raises many unrelated classes; map them all here
        raise _s3_error(exc, what) from None


def semantics_of(name: str) -> str:
    """DataLink semantics from an archive file name (S3 listings carry none)."""
    if name.endswith(".asdm.sdm.tar"):
        return "#progenitor"
    if name.endswith("_auxiliary.tar"):
        return "#auxiliary"
    if name.endswith(".README.txt"):
        return "#documentation"
    if re.search(r"_\d{3}_of_\d{3}\.tar$", name):
        return "#this"
    return ""


def default_s3_client(max_pool: int = 32):
    """A boto3 client from the environment (alma_regen.s3.s3_client), with a pool for the ranged GETs."""
    return s3.s3_client(workers=max_pool)


class S3Source:
    """An S3 mirror: the archive's file names under s3://bucket/prefix; big files in parallel ranged GETs."""

    kind = "s3"

    def __init__(self, url: str, client=None, *, part_size: int = 8 << 20, workers: int = 4,
                 parallel_min: int = 32 << 20, timeout: float = 60.0):
        u = urlsplit(url)
        if u.scheme != "s3" or not u.netloc:
            raise PermanentError(f"not an s3://bucket/prefix URL: {url!r}")
        self.bucket, self.prefix = u.netloc, u.path.strip("/")
        self.client = client if client is not None else default_s3_client()
        # An object of at least `parallel_min` bytes comes in `workers` parallel ranged GETs of
        # `part_size` (fewer when it has fewer parts), a smaller one in one stream. Ranges add up
        # where one TCP stream is held back (a far store, S3's per-connection rate), and let a
        # store on the same host serve on every core: bench/staging.py measured them faster than
        # one stream from the local SeaweedFS too (the previous default, one stream first and
        # ranges only when it was slow with CPU to spare, stayed one stream there, and behind a
        # 100 MB/s-per-stream link on a busy machine as well). workers=1: always one stream.
        self.part_size, self.workers, self.parallel_min = part_size, workers, parallel_min
        self.timeout = timeout
        self._signed: dict = {}  # key -> (presigned URL, when): one signature per object, not per range

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def validators(self, f: RemoteFile) -> tuple:
        """(ETag, '') of the object: the listing already holds it."""
        return f.etag, ""

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def list_files(self, mous: str) -> list[RemoteFile]:
        out = []
        token = None
        prefix = f"{self.prefix}/" if self.prefix else ""
        while True:
            kw = dict(Bucket=self.bucket, Prefix=prefix)
            if token:
                kw["ContinuationToken"] = token
            page = _s3_call(self.client.list_objects_v2, f"listing {self.describe()}", **kw)
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix):]
                if "/" in name:
                    continue  # only the files directly under the prefix
                out.append(RemoteFile(name=name, size=obj["Size"], url=f"s3://{self.bucket}/{obj['Key']}",
                                      semantics=semantics_of(name), etag=obj.get("ETag", "").strip('"')))
            if not page.get("IsTruncated"):
                return out
            token = page.get("NextContinuationToken")

    def open(self, f: RemoteFile, start: int = 0, etag: str = "", last_modified: str = "") -> Body:
        key = self._key(f.name)
        etag = etag or f.etag
        if start and etag:
            head = _s3_call(self.client.head_object, f.name, Bucket=self.bucket, Key=key)
            now = head.get("ETag", "").strip('"')
            if now != etag:
                if head.get("ContentLength") != f.size:
                    raise SourceChangedError(f"{f.name}: now {head.get('ContentLength')} bytes, "
                                             f"the listing said {f.size}")
                start, etag = 0, now  # changed with the same size: restart on the new version
        if not etag:
            etag = _s3_call(self.client.head_object, f.name, Bucket=self.bucket, Key=key)["ETag"].strip('"')
        if f.size - start < self.parallel_min or self.workers <= 1:
            reader = _Stream(*self._get(f, key, start, None, etag), f, start)
        else:
            reader = _Parts(self, f, key, start, etag)
        return Body(reader, start, f.size - start, etag)

    def _url(self, key: str) -> str:
        """A presigned GET URL of the object, made once per object and reused for an hour's
        half (a signature costs about a millisecond of CPU; a big object has hundreds of ranges)."""
        url, made = self._signed.get(key, ("", None))
        if made is None or time.monotonic() - made > 1800:
            url = self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                                     ExpiresIn=3600)
            self._signed[key] = (url, time.monotonic())
        return url

    def _get(self, f: RemoteFile, key: str, start: int, end: Optional[int], etag: str, conn=None):
        """(connection, response) of a GET of bytes [start, end) of the object version `etag`.

        The bytes go through a presigned URL and http.client rather than botocore's
        streaming body: same credentials, a third of the CPU per byte (measured with
        bench/staging.py), which matters on a 2-core worker. `conn`: an idle keep-alive
        connection to the same store to send the request on (the parts reuse theirs).
        """
        u = urlsplit(self._url(key))
        headers = {"If-Match": f'"{etag}"'}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if conn is None:
            cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
            conn = cls(u.hostname, u.port, timeout=self.timeout)
        try:
            conn.request("GET", f"{u.path}?{u.query}", headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise TransientError(f"{f.name}: {type(exc).__name__}: {exc}") from None
        ranged = bool(start or end is not None)
        if resp.status == 206 and ranged:
            m = re.match(r"bytes (\d+)-", resp.getheader("Content-Range") or "")
            if m and int(m[1]) == start:
                return conn, resp
            conn.close()
            raise TransientError(f"{f.name}: the store answered another range "
                                 f"({resp.getheader('Content-Range')!r} for {headers['Range']})")
        if resp.status == 200 and not ranged:
            return conn, resp
        if resp.status in (200, 206):
            conn.close()
            raise TransientError(f"{f.name}: the store answered {resp.status} to "
                                 f"{headers.get('Range', 'a GET of the whole object')}")
        try:
            detail = resp.read(2000).decode(errors="replace")
        except (OSError, http.client.HTTPException):
            detail = ""
        conn.close()
        code = re.search(r"<Code>([^<]+)</Code>", detail)
        what = f"{f.name} ({self.describe()}{': ' + code[1] if code else ''})"
        if resp.status == 412:
            raise SourceChangedError(f"{what}: the object changed (ETag is no longer {etag})")
        if resp.status == 416:
            raise SourceChangedError(f"{what}: range not satisfiable (object shrank?)")
        raise _status_error(resp.status, resp.reason, what, resp.getheader("Retry-After"))


class _Parts:
    """Bytes [start, size) of an object, fetched in `workers` parallel ranged GETs, read in order.

    At most `workers` parts are in flight and one is being read: workers + 1 buffers of
    part_size, reused from part to part (no buffer allocated per part). Each worker keeps its
    connection alive from one range to the next (no new TCP/TLS handshake per part).
    """

    def __init__(self, src: S3Source, f: RemoteFile, key: str, start: int, etag: str):
        self.src, self.f, self.key, self.etag = src, f, key, etag
        self.ranges = ((lo, min(lo + src.part_size, f.size)) for lo in range(start, f.size, src.part_size))
        self.pool = ThreadPoolExecutor(src.workers, thread_name_prefix="s3part")
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.busy: set = set()  # connections receiving a part (closed by close() to wake them)
        self.idle: list = []  # kept-alive connections between parts
        self.spare: list = []  # buffers of parts read to the end
        self.pending: deque = deque()
        self.cur, self.pos = memoryview(b""), 0
        for _ in range(src.workers):
            self._submit()

    def _submit(self) -> None:
        r = next(self.ranges, None)
        if r is not None:
            self.pending.append(self.pool.submit(self._fetch, *r, self.spare.pop() if self.spare else None))

    def _fetch(self, lo: int, hi: int, buf: Optional[bytearray]):
        with self.lock:
            if self.stop.is_set():
                raise TransientError(f"{self.f.name}: stopped")
            conn = self.idle.pop() if self.idle else None
        try:
            conn, resp = self.src._get(self.f, self.key, lo, hi, self.etag, conn)
        except TransientError:
            if conn is None:
                raise
            # a kept-alive connection the store had closed meanwhile: once more on a new one
            conn, resp = self.src._get(self.f, self.key, lo, hi, self.etag)
        with self.lock:
            self.busy.add(conn)
            stopped = self.stop.is_set()
        if stopped:
            _close_conn(conn)
        if buf is None:
            buf = bytearray(self.src.part_size)
        view, got, kept = memoryview(buf)[:hi - lo], 0, False
        try:
            while got < hi - lo:
                n = resp.readinto(view[got:])
                if not n:
                    break
                got += n
            # the whole body read: the connection can carry the next range
            kept = got == hi - lo and resp.isclosed() and not resp.will_close
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise TransientError(f"{self.f.name}: part {lo}-{hi - 1} lost after {got} bytes: "
                                 f"{type(exc).__name__}") from None
        finally:
            with self.lock:
                self.busy.discard(conn)
                if kept and not self.stop.is_set():
                    self.idle.append(conn)
                else:
                    conn.close()
        if got != hi - lo:
            raise TransientError(f"{self.f.name}: part {lo}-{hi - 1} returned {got} bytes")
        return buf, hi - lo

    def readinto(self, view) -> int:
        if self.pos >= len(self.cur):
            if self.cur.obj is not None and len(self.cur):
                self.spare.append(self.cur.obj)
            self.cur, self.pos = memoryview(b""), 0
            if not self.pending:
                return 0
            buf, n = self.pending.popleft().result()
            self._submit()
            self.cur = memoryview(buf)[:n]
        k = min(len(view), len(self.cur) - self.pos)
        view[:k] = self.cur[self.pos:self.pos + k]
        self.pos += k
        return k

    def ready(self) -> bool:
        return self.pos < len(self.cur) or not self.pending or self.pending[0].done()

    def close(self) -> None:
        with self.lock:
            if self.stop.is_set():
                return
            self.stop.set()
            for conn in self.busy:
                _close_conn(conn)
            for conn in self.idle:
                conn.close()
            self.idle.clear()
        for fut in list(self.pending):  # (the reader thread may be changing it)
            fut.cancel()
        self.pool.shutdown(wait=True)


def open_source(url: str, *, s3_client=None, auth=None, cookie: str = "", **kw):
    """The source for a `--source` URL: http(s)://host:port (request handler) or s3://bucket/prefix."""
    scheme = urlsplit(url).scheme
    if scheme in ("http", "https"):
        return HttpSource(url, auth=auth, cookie=cookie, **kw)
    if scheme == "s3":
        return S3Source(url, s3_client, **kw)
    raise PermanentError(f"unsupported source {url!r}: expected http(s)://host:port or s3://bucket/prefix")
