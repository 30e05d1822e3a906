"""Objects up to S3, each verified, every file read once.

`Uploader` puts a file (single PUT or multipart, its parts hashed by the upload threads
while they go up) or a stream of chunks (a tar built while it uploads), then checks what
the server holds (HEAD: size, and the CRC32 checksum the server computed from the bytes it
received against our parts'; on a server without additional checksums, the ETag against
our MD5s). An object of an interrupted attempt is reused when it verifies.
No Airflow here.
"""
import base64
import hashlib
import logging
import tarfile
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import PermanentError, TransientError
from ..s3 import classify as _classify

log = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024
MIN_PART = 5 * 1024 * 1024  # S3's smallest part but the last
WORKERS = 8
_CONTENT_TYPES = {".fits": "application/fits", ".json": "application/json", ".html": "text/html; charset=utf-8",
                  ".png": "image/png", ".log": "text/plain; charset=utf-8", ".tar": "application/x-tar"}


# ------------------------------------------------------------------ checksums

def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


class _Parts:
    """What the server must report for an object we uploaded in these parts.

    The parts carry S3's CRC32 additional checksum, which the server checks on receipt
    and reports (composite over the parts) on HEAD: the AWS SDKs' own default, and a
    third of SHA256's CPU on both sides (on a 2-core worker that is upload time). The
    file's SHA256 for the manifest is computed once, as it is read. MD5s only where
    asked: the ETag is what is left to check on a server without additional checksums."""

    def __init__(self, md5: bool = True):
        self.with_md5 = md5
        self.md5s, self.crcs, self.size = [], [], 0

    def add(self, data: bytes):
        self.append(len(data), *digests(data, self.with_md5))

    def append(self, size: int, md5: bytes | None, crc: bytes):
        if self.with_md5:
            self.md5s.append(md5)
        self.crcs.append(crc)
        self.size += size

    def etag(self) -> str | None:
        if not self.with_md5:
            return None
        if len(self.md5s) == 1:
            return self.md5s[0].hex()
        return hashlib.md5(b"".join(self.md5s)).hexdigest() + f"-{len(self.md5s)}"

    def checksum_crc32(self) -> str:
        """S3's ChecksumCRC32: of the object, or composite (of the part checksums) with -N."""
        if len(self.crcs) == 1:
            return _b64(self.crcs[0])
        return _b64(_crc32(b"".join(self.crcs))) + f"-{len(self.crcs)}"


def _crc32(data: bytes) -> bytes:
    return zlib.crc32(data).to_bytes(4, "big")


def digests(data: bytes, md5: bool = True) -> tuple:
    """(MD5 or None, CRC32) of one part. hashlib and zlib let go of the GIL on big buffers:
    called from the upload threads, the parts are hashed in parallel with the reading."""
    return (hashlib.md5(data).digest() if md5 else None), _crc32(data)


def file_digests(path: Path, part_size: int) -> tuple:
    """(sha256 hex of the file, _Parts as it will be uploaded): the second read of a file
    that only a resumed publish pays, to decide whether the object there is this file."""
    whole, parts = hashlib.sha256(), _Parts()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(part_size), b""):
            whole.update(chunk)
            parts.add(chunk)
    if parts.size == 0:
        parts.add(b"")
    return whole.hexdigest(), parts


# ------------------------------------------------------------------ uploading

class _PartBuffers:
    """Part-size buffers a file is read into, reused from part to part once a part is up.

    A new 8 MiB object per part is fresh memory: the kernel zeroes each of its pages on first
    touch (78,000 page faults, 0.3 s of system CPU for the first 512 MB file of a process,
    measured here against 8,000 once warm), CPU a 2-core worker shares with the upload."""

    def __init__(self, size: int):
        self.size, self._free, self._lock = size, [], threading.Lock()

    def get(self) -> bytearray:
        with self._lock:
            return self._free.pop() if self._free else bytearray(self.size)

    def put(self, buf) -> None:
        if isinstance(buf, bytearray) and len(buf) == self.size:  # ours (a stream's chunks are bytes)
            with self._lock:
                self._free.append(buf)


class Uploader:
    """Multipart uploads with checksums and a verification of every object."""

    def __init__(self, client, bucket: str, *, part_size: int = PART_SIZE, workers: int = WORKERS, progress=None):
        if part_size < MIN_PART:
            raise PermanentError(f"part size {part_size} is below S3's minimum of {MIN_PART} bytes")
        self.client, self.bucket, self.part_size = client, bucket, part_size
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="s3-part")
        self.inflight = threading.BoundedSemaphore(workers * 2)  # memory: at most 2 x workers parts held
        self.progress = progress or (lambda key, done, total: None)
        self.checksums = True  # S3 additional checksums, until the server says it has none
        self._buffers = _PartBuffers(part_size)

    def close(self):
        self.pool.shutdown(wait=True)

    def head(self, key: str):
        from botocore.exceptions import ClientError
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404 or \
                    exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise _classify(exc, f"HEAD s3://{self.bucket}/{key}") from None
        except Exception as exc:  # noqa: BLE001 (network faults become TransientError)
            raise _classify(exc, f"HEAD s3://{self.bucket}/{key}") from None

    # -- one object from a file, read once: hashed while it goes up
    def upload_file(self, path: Path, key: str) -> dict:
        size = path.stat().st_size
        old = self.head(key)
        # Only an interrupted attempt of this run leaves an object under this key: reading
        # the file a second time to compare is paid by a resumed publish, never by a new one.
        if old is not None and old.get("ContentLength") == size:
            sha, parts = file_digests(path, self.part_size)
            if self._matches(old, sha, parts):
                self.progress(key, size, size)
                return {"key": key, "size": size, "sha256": sha, "etag": old.get("ETag", "").strip('"'),
                        "content_type": _content_type(key), "reused": True,
                        "checksum_crc32": old.get("ChecksumCRC32")}
        with open(path, "rb") as f:
            record = self.upload_stream(key, self._read_parts(f))
        if record["size"] != size:
            raise TransientError(f"{path} changed while it was uploaded ({size} bytes, then {record['size']})")
        return record

    def _read_parts(self, f):
        """The file in part_size pieces read into reused buffers (handed back by the upload)."""
        while True:
            buf = self._buffers.get()
            n = f.readinto(buf)
            if n < len(buf):  # the end: the last part is its own object, of its exact size
                self._buffers.put(buf)
                if n:
                    yield bytes(memoryview(buf)[:n])
                return
            yield buf

    # -- one object from a stream: the whole sha256 known only at the end
    def upload_stream(self, key: str, chunks) -> dict:
        record = {"key": key, "content_type": _content_type(key)}
        whole = hashlib.sha256()

        def hashed():
            for c in chunks:
                whole.update(c)
                yield c
        parts = self._upload(key, hashed(), record, whole)
        record.update(size=parts.size, sha256=whole.hexdigest())
        self._verify(key, record, parts)
        record["parts"] = len(parts.crcs)
        return record

    def _upload(self, key, chunks, record, whole) -> _Parts:
        """Single PUT when the whole object fits in one part (its sha256 then goes in the
        object's metadata too), else multipart."""
        first = next(chunks, b"")
        second = next(chunks, None)
        what = f"upload of s3://{self.bucket}/{key}"
        extra = {"ContentType": record["content_type"]}
        if second is None:
            parts = _Parts()
            parts.add(first)
            try:
                self._put(key, first, parts, {**extra, "Metadata": {"sha256": whole.hexdigest()}})
            except Exception as exc:  # noqa: BLE001
                raise _classify(exc, what) from None
            finally:
                self._buffers.put(first)
            self.progress(key, parts.size, parts.size)
            return parts
        return self._multipart(key, _chain(first, second, chunks), extra, what)

    def _put(self, key, data, parts, extra):
        kwargs = dict(Bucket=self.bucket, Key=key, Body=data, **extra)
        if self.checksums:
            try:
                return self.client.put_object(ChecksumCRC32=parts.checksum_crc32(), **kwargs)
            except Exception as exc:  # noqa: BLE001
                if not _no_checksum_support(exc):
                    raise
                self._drop_checksums(exc)
        return self.client.put_object(ContentMD5=_b64(parts.md5s[0]), **kwargs)

    def _multipart(self, key, chunks, extra, what) -> _Parts:
        c = self.client
        try:
            try:
                mp = c.create_multipart_upload(Bucket=self.bucket, Key=key,
                                               **({"ChecksumAlgorithm": "CRC32"} if self.checksums else {}), **extra)
            except Exception as exc:  # noqa: BLE001
                if not (self.checksums and _no_checksum_support(exc)):
                    raise
                self._drop_checksums(exc)
                mp = c.create_multipart_upload(Bucket=self.bucket, Key=key, **extra)
        except Exception as exc:  # noqa: BLE001
            raise _classify(exc, what) from None
        upload_id, use_sums = mp["UploadId"], self.checksums and mp.get("ChecksumAlgorithm") == "CRC32"
        futures, done = [], [0]
        lock = threading.Lock()

        def send(number, data):
            try:
                md5, crc = digests(data, md5=not use_sums)
                kw = dict(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data)
                kw.update(ChecksumCRC32=_b64(crc), ChecksumAlgorithm="CRC32") if use_sums else \
                    kw.update(ContentMD5=_b64(md5))
                r = c.upload_part(**kw)
                with lock:
                    done[0] += len(data)
                self.progress(key, done[0], None)
                return (len(data), md5, crc), {"PartNumber": number, "ETag": r["ETag"],
                                               **({"ChecksumCRC32": _b64(crc)} if use_sums else {})}
            finally:
                self._buffers.put(data)
                self.inflight.release()

        try:
            for number, data in enumerate(chunks, 1):
                self.inflight.acquire()
                futures.append(self.pool.submit(send, number, data))
                # Fail fast: a dead endpoint should not wait for the whole file to be read.
                failed = next((f for f in futures if f.done() and f.exception()), None)
                if failed:
                    failed.result()
            results = [f.result() for f in futures]
            c.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                        MultipartUpload={"Parts": [part for _, part in results]})
        except BaseException as exc:
            for f in futures:
                f.cancel()
            try:  # best effort: the server may be the thing that failed
                c.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception:  # noqa: BLE001
                pass
            if isinstance(exc, Exception):
                raise _classify(exc, what) from None
            raise
        parts = _Parts(md5=not use_sums)
        for digest, _ in results:
            parts.append(*digest)
        return parts

    def _drop_checksums(self, exc):
        log.warning("the S3 server does not take additional checksums (%s): relying on ETag/MD5 and our "
                    "sha256 metadata", exc)
        self.checksums = False

    @staticmethod
    def _matches(head, sha: str, parts) -> bool:
        """Is the object under the key the file whose digests these are? Any strong evidence
        the server gives: our sha256 metadata, its CRC32 checksum, else its ETag (MD5)."""
        if head.get("ContentLength") != parts.size:
            return False
        meta = (head.get("Metadata") or {}).get("sha256")
        if meta:
            return meta == sha
        if head.get("ChecksumCRC32"):
            return head["ChecksumCRC32"] == parts.checksum_crc32()
        return head.get("ETag", "").strip('"') == parts.etag()

    def _verify(self, key, record, parts):
        """HEAD the object: size, and what the server computed from the bytes it received
        (its CRC32 checksum, the ETag where we sent MD5s) against our own digests."""
        head = self.head(key)
        where = f"s3://{self.bucket}/{key}"
        if head is None:
            raise TransientError(f"{where} is missing right after its upload")
        problems = []
        if head.get("ContentLength") != parts.size:
            problems.append(f"size {head.get('ContentLength')} != {parts.size}")
        if parts.etag() is not None and head.get("ETag", "").strip('"') != parts.etag():
            problems.append(f"ETag {head.get('ETag')} != {parts.etag()}")
        server_sum = head.get("ChecksumCRC32")
        if server_sum and server_sum != parts.checksum_crc32():
            problems.append(f"ChecksumCRC32 {server_sum} != {parts.checksum_crc32()}")
        if not server_sum and parts.etag() is None:
            problems.append("the server reports no CRC32 checksum for parts it took with one")
        meta = (head.get("Metadata") or {}).get("sha256")
        if meta and meta != record["sha256"]:
            problems.append(f"sha256 metadata {meta} != {record['sha256']}")
        if problems:
            # The bytes stored are not the bytes sent: a retry uploads them again.
            raise TransientError(f"{where} failed verification after upload: " + "; ".join(problems))
        record.update(etag=head.get("ETag", "").strip('"'), checksum_crc32=server_sum, verified=True)


def _chain(first, second, rest):
    yield first
    yield second
    yield from rest


def _no_checksum_support(exc) -> bool:
    from botocore.exceptions import ClientError
    if not isinstance(exc, ClientError):
        return False
    code = exc.response.get("Error", {}).get("Code", "")
    return code in ("NotImplemented", "InvalidArgument", "InvalidRequest", "XAmzContentChecksumMismatch") and \
        "checksum" in str(exc).lower()


def _content_type(key: str) -> str:
    return next((t for ext, t in _CONTENT_TYPES.items() if key.endswith(ext)), "application/octet-stream")


class _TarStream:
    """A file-like sink for tarfile's stream mode that hands out fixed-size chunks."""

    def __init__(self, size):
        self.size, self.buf, self.ready = size, bytearray(), []

    def write(self, data):
        self.buf += data
        while len(self.buf) >= self.size:
            self.ready.append(bytes(self.buf[: self.size]))
            del self.buf[: self.size]
        return len(data)

    def take(self):
        out, self.ready = self.ready, []
        return out


def tar_chunks(folder: Path, arcname: str, part_size: int):
    """The tar of `folder` as chunks of part_size bytes, produced while it is read."""
    sink = _TarStream(part_size)
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for p in [folder] + sorted(folder.rglob("*")):
            tf.add(p, arcname=arcname if p == folder else f"{arcname}/{p.relative_to(folder)}", recursive=False)
            yield from sink.take()
    yield from sink.take()
    if sink.buf:
        yield bytes(sink.buf)


def upload_bytes(up: Uploader, key: str, data: bytes) -> dict:
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=Path(key).suffix) as tmp:
        tmp.write(data)
        tmp.flush()
        return up.upload_file(Path(tmp.name), key)
