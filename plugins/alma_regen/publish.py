"""Publish a member's products to object storage, never half-written.

Layout, for `s3://bucket/prefix` and MOUS uid___A001_X1_X2:
    prefix/uid___A001_X1_X2/<run>/products/*.fits        regenerated images
                                 /fidelity.json, imaging.json, calibration.json
                                 /logs/<path>/casa-*.log
                                 /index.html, thumbnails/*.png   the summary page
                                 /calibrated/<EB>.ms.split.cal.tar   (optional, streamed)
                                 /manifest.json          written LAST
    prefix/uid___A001_X1_X2/latest.json                  moved after the manifest

Rules: a set without manifest.json is not published (readers look for the
manifest first); every object is verified after upload (HEAD: size, and the
S3 CRC32 checksum the server computed from the bytes it received against our
own part checksums; on a server without additional checksums, the ETag against
our MD5s); a run whose manifest exists is never written again (a rerun picks a
new run id, or is refused); objects of an interrupted attempt with the same run
id are reused when they verify, re-uploaded otherwise. Every file is read once:
its parts are hashed by the upload threads while they go up, its sha256 (the
manifest's) as it is read; only a resumed publish reads a file twice. The
calibrated MS tar is built while it uploads (tarfile in stream mode feeding
multipart parts): nothing is staged on disk.

Credentials: the caller's client (the operator's, from the `alma_products_s3`
connection through its hook), else `s3.s3_client()` from the environment
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ALMA_REGEN_S3_ENDPOINT or
AWS_ENDPOINT_URL, AWS_DEFAULT_REGION). This module does not import Airflow.
"""
import base64
import hashlib
import html
import json
import logging
import re
import tarfile
import threading
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from . import __version__, naming
from .member import Member
from .publish_claim import claim_run, default_owner
from .s3 import ENDPOINT_ENV, classify as _classify, is_missing, key as s3_key, parse_s3_url, s3_client  # noqa: F401
from .errors import DeliveryError, PermanentError, TransientError
from .scrub import scrub_bytes

log = logging.getLogger(__name__)

SCHEMA = "alma-regen/manifest/1"
CONN_ID = "alma_products_s3"
PART_SIZE = 8 * 1024 * 1024
MIN_PART = 5 * 1024 * 1024  # S3's smallest part but the last
WORKERS = 8
_RUN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
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
            record = self.upload_stream(key, iter(lambda: f.read(self.part_size), b""))
        if record["size"] != size:
            raise TransientError(f"{path} changed while it was uploaded ({size} bytes, then {record['size']})")
        return record

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


# ------------------------------------------------------------------ what to publish

def _calibration_json(member: Member) -> Path | None:
    for p in (member.calibration_summary, member.root / "calibration.json"):
        if p.is_file():
            return p
    return None


def collect(member_dir, include_ms: bool = False) -> dict:
    """{relative key: local Path} of the files to publish, plus the MSs to stream."""
    member = Member.coerce(member_dir)
    products = sorted(member.imaging_products.glob("*.fits"))
    if not products:
        raise PermanentError(f"{member.imaging_products} holds no FITS image: run alma-regen image first")
    files = {f"products/{p.name}": p for p in products}
    for p in (member.fidelity_record, member.imaging_record):
        if p.is_file():
            files[p.name] = p
    cal = _calibration_json(member)
    if cal:
        files["calibration.json"] = cal
    for p in sorted(member.thumbnails.glob("*.png")):
        files[f"thumbnails/{p.name}"] = p
    for base in (member.calibrated, member.imaging):
        if base.is_dir():
            for log_file in sorted(base.rglob("casa-*.log")):
                files[f"logs/{log_file.relative_to(member.root)}"] = log_file
    streams = {}
    if include_ms:
        from .imaging import calibrated_ms
        for ms in calibrated_ms(member):
            streams[f"calibrated/{ms.name}.tar"] = ms.resolve()
    return {"files": files, "streams": streams}


def inputs_of(member_dir) -> list:
    """The inputs with sizes and checksums: the staging stamps where staging left them
    (size and sha256 of each archive file as downloaded), else hashes of the member's files."""
    member = Member.coerce(member_dir)
    stamps = member.stamps()
    if stamps:
        out = []
        for s in stamps:
            d = json.loads(s.read_text())
            out.append({"file": d.get("file"), "size": d.get("size"), "sha256": d.get("sha256"),
                        "source": d.get("source"), "kind": d.get("kind")})
        return out
    out = []
    for folder in (member.script, member.calibration):
        for p in sorted(folder.glob("*")):
            if p.is_file():
                out.append({"file": f"{folder.name}/{p.name}", "size": p.stat().st_size, "sha256": _sha256_file(p)})
    for asdm in sorted(member.raw.glob("*.asdm.sdm")):
        size, digest = _tree_digest(asdm)
        out.append({"file": f"raw/{asdm.name}", "size": size, "sha256_tree": digest})
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tree_digest(folder: Path):
    """sha256 over (relative path, sha256) of every file: one checksum for an ASDM directory."""
    h, size = hashlib.sha256(), 0
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            size += p.stat().st_size
            h.update(f"{p.relative_to(folder)}\0{_sha256_file(p)}\n".encode())
    return size, h.hexdigest()


def summary_html(mous: str, run: str, imaging: dict | None, fidelity: dict | None, keys: list) -> str:
    """The products' page: per image its preview (regenerated, delivered, difference on sky
    axes; alma_regen.previews) with alt text, the fidelity numbers and verdict, peak, rms, beam."""
    from .previews import numbers
    e = html.escape
    sections = []
    for entry in (fidelity or {}).get("images", []):
        s = entry.get("regenerated", {})
        beam = s.get("beam") or {}
        pv = entry.get("preview") or {}
        src = f"thumbnails/{Path(pv['path']).name}" if pv.get("path") else ""
        thumb = f"thumbnails/{Path(s['thumbnail']).name}" if s.get("thumbnail") else ""
        if src in keys:
            fig = f'<figure><img src="{e(src)}" alt="{e(pv.get("alt", ""))}" loading="lazy"></figure>'
        elif thumb in keys:
            fig = f'<figure><img src="{e(thumb)}" alt="{e("Regenerated image " + entry["image"])}"></figure>'
        else:
            fig = ""
        n = numbers(entry)
        status = entry.get("status", "")
        ratio = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731 - 1.0000, not "1"
        cells = [("peak ratio (regenerated / delivered)", ratio(n["peak_ratio"])),
                 ("peak offset", f"{_fmt(n['offset_arcsec'], 3)} arcsec ({_fmt(n['offset_beams'], 2)} beams)"),
                 ("rms ratio", ratio(n["rms_ratio"])),
                 ("max |difference| / rms", _fmt(n["diff_max_sigma"], 3)
                  + (f" (limit {_fmt(n['diff_limit_sigma'], 3)})" if n["diff_limit_sigma"] is not None else "")),
                 ("rms of the difference / rms", _fmt(n["diff_rms_sigma"], 3))] if entry.get("counterpart") else []
        cells += [("peak", f"{_fmt(s.get('peak'))} {e(s.get('unit') or '')}"),
                  ("rms", f"{_fmt(s.get('rms'))} {e(s.get('unit') or '')}"),
                  ("beam", f"{_fmt(beam.get('major_arcsec'), 3)} x {_fmt(beam.get('minor_arcsec'), 3)} arcsec, "
                           f"PA {_fmt(beam.get('pa_deg'), 3)} deg")]
        rows = "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in cells)
        notes = "; ".join(entry.get("failures", [])) or entry.get("note", "") or entry.get("delivered_as", "")
        against = (f"<a href=\"products/{e(entry['image'])}\">The regenerated FITS</a>, compared with the delivered "
                   f"<code>{e(entry['counterpart'])}</code>" if entry.get("counterpart")
                   else f'<a href="products/{e(entry["image"])}">the regenerated FITS</a>')
        sections.append(
            f'<section class="image"><h2><code>{e(entry["image"])}</code> '
            f'<span class="verdict {e(status.replace(" ", "-"))}">{e(status)}</span></h2>{fig}'
            f'<p>{against}</p><table class="numbers">{rows}</table>'
            + (f'<p class="notes">{e(notes)}</p>' if notes else "") + "</section>")
    if not sections:
        sections = [f'<p><a href="{e(k)}">{e(k)}</a>: no fidelity check was run</p>'
                    for k in keys if k.startswith("products/")]
    engine = (imaging or {}).get("engine", "?")
    casa = ((imaging or {}).get("casa") or {}).get("version", "?")
    summary = (fidelity or {}).get("summary") or {}
    verdict = ", ".join(f"{v} {k}" for k, v in summary.items() if v) or "not checked"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(mous)} run {e(run)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:14px/1.5 Inter,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:16px 24px;color:#111}}
h1{{font-size:20px;margin:0 0 4px}}h2{{font-size:15px;margin:0 0 8px}}section.image{{border-top:1px solid #e4e4e7;
padding:16px 0}}figure{{margin:0 0 8px}}figure img{{max-width:100%;height:auto}}
table.numbers th{{text-align:left;font-weight:500;color:#52525b;padding:2px 16px 2px 0}}
.verdict{{border-radius:999px;padding:1px 10px;font-size:12px;color:#fff;background:#71717a}}
.verdict.pass{{background:#16a34a}}.verdict.fail{{background:#dc2626}}.notes{{color:#b91c1c}}</style></head>
<body><h1>{e(mous)}</h1><p>run {e(run)}: imaging engine {e(engine)}, CASA {e(casa)}; fidelity: {e(verdict)};
<a href="manifest.json">manifest.json</a>, <a href="fidelity.json">fidelity.json</a></p>
<p>Each image: the regenerated one, the delivered one on the same colour scale, and their difference in
units of the delivered rms; the ellipse in a corner is the restoring beam.</p>
{chr(10).join(sections)}
</body></html>
"""


def _fmt(v, digits=4):
    return "-" if v is None else f"{v:.{digits}g}"


def _load(path: Path | None):
    return json.loads(path.read_text()) if path and path.is_file() else None


# ------------------------------------------------------------------ publish

def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def publish(member_dir, to: str, *, run: str | None = None, client=None, include_ms: bool = False,
            part_size: int = PART_SIZE, workers: int = WORKERS, progress=None, requested: dict | None = None,
            owner: str | None = None) -> dict:
    """Upload and verify everything, then manifest.json, then latest.json. Returns the manifest.

    requested: what the operator asked for ({"calibration": "auto", "imaging": "auto"}), when known.

    run: the run id (default: a new unique one); a run whose manifest exists is refused.
    client: a boto3 S3 client (default: `s3_client()` from the environment).
    progress: called as progress(key, bytes_done, total_or_None) while uploading.
    owner: who publishes (default host:pid); a claim of the same owner is resumed (publish_claim).
    """
    t0 = time.monotonic()
    member = Member.coerce(member_dir)
    bucket, prefix = parse_s3_url(to)
    mous = member.mous
    if not mous:
        raise PermanentError(f"{member} is not a member.<MOUS> folder: cannot tell which MOUS to publish")
    mous_f = member.mous_file
    run = run or new_run_id()
    if not _RUN_RE.match(run):
        raise PermanentError(f"run id {run!r} must be letters, digits, '.', '_' or '-' (at most 128)")
    base = s3_key(prefix, mous_f, run) + "/"
    latest_key = s3_key(prefix, mous_f, "latest.json")
    location = f"s3://{bucket}/{base}"
    what = collect(member, include_ms)
    client = client or s3_client(workers=workers)
    up = Uploader(client, bucket, part_size=part_size, workers=workers, progress=progress)
    claim = None
    try:
        if up.head(base + "manifest.json") is not None:
            raise PermanentError(f"{location} is already published (its manifest.json exists); a rerun never "
                                 "overwrites a published run: publish under a new run id")
        # One publisher per run id, decided by the store (a conditional PUT): before any upload.
        claim = claim_run(client, bucket, base, owner or default_owner(), location,
                          lambda: up.head(base + "manifest.json") is not None)
        imaging_doc = _load(member.imaging_record)
        fidelity_doc = _load(member.fidelity_record)
        outputs = []
        files = what["files"]
        log.info("publishing %d file(s)%s to %s", len(files),
                 f" and {len(what['streams'])} streamed MS tar(s)" if what["streams"] else "", location)
        # Small files in parallel; each large one spreads its parts over the same workers.
        with ThreadPoolExecutor(max(1, workers // 2), thread_name_prefix="s3-file") as pool:
            # CASA logs go up scrubbed of anything that looks like a credential (second line of defence).
            futures = [pool.submit(_upload_bytes, up, base + key, scrub_bytes(path.read_bytes()))
                       if key.startswith("logs/") else pool.submit(up.upload_file, path, base + key)
                       for key, path in files.items()]
            for f in futures:
                outputs.append(f.result())
        for key, folder in what["streams"].items():
            outputs.append(up.upload_stream(base + key, tar_chunks(folder, folder.name, part_size)))
        page = summary_html(mous, run, imaging_doc, fidelity_doc, list(files))
        outputs.append(_upload_bytes(up, base + "index.html", page.encode()))
        for o in outputs:
            o["key"] = o["key"][len(base):]
        manifest = {
            "schema": SCHEMA, "mous_uid": mous, "run": run, "location": location,
            "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "alma_regen": __version__,
            "inputs": inputs_of(member),
            "engines": _engines(member, imaging_doc, requested),
            "timings_s": {"imaging": (imaging_doc or {}).get("seconds"),
                          "calibration": (_load(_calibration_json(member)) or {}).get("elapsed_s"),
                          "publish": round(time.monotonic() - t0, 3)},
            "outputs": sorted(outputs, key=lambda o: o["key"]),
            "fidelity": _fidelity_summary(fidelity_doc),
        }
        # Last: the manifest makes the set published; latest.json follows it.
        body = json.dumps(manifest, indent=1).encode()
        _upload_bytes(up, base + "manifest.json", body)
        latest = {"mous_uid": mous, "run": run, "manifest": f"s3://{bucket}/{base}manifest.json",
                  "manifest_sha256": hashlib.sha256(body).hexdigest(), "published_at": manifest["published_at"]}
        _upload_bytes(up, latest_key, json.dumps(latest, indent=1).encode())
    finally:
        if claim is not None:
            claim.release()
        up.close()
    log.info("published %s: %d objects, manifest written last, latest.json moved (%.1f s)", location,
             len(manifest["outputs"]), time.monotonic() - t0)
    return manifest


def _upload_bytes(up: Uploader, key: str, data: bytes) -> dict:
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=Path(key).suffix) as tmp:
        tmp.write(data)
        tmp.flush()
        return up.upload_file(Path(tmp.name), key)


def _engines(member, imaging_doc, requested: dict | None = None) -> dict:
    member = Member.coerce(member)
    cal = _load(_calibration_json(member)) or {}
    engines = {
        "imaging": {k: (imaging_doc or {}).get(k) for k in ("engine", "reason", "casa", "casa_choice")},
        "calibration": _calibration_engine(cal),
    }
    for step, doc in engines.items():
        asked = (requested or {}).get(step)
        if asked is None:
            continue
        doc["requested"] = asked
        # An engine that `auto` chose and that then ran whole records itself as
        # "requested": say what the delivery asked for instead of a request nobody made.
        if asked == "auto" and doc["reason"] == f"engine {doc['engine']} requested":
            doc["reason"] = f"auto: {_delivery_reason(member, step)}"
    return engines


def _delivery_reason(member: Member, step: str) -> str:
    try:
        kind = member.delivery.imaging_kind() if step == "imaging" else member.delivery.calibration_kind()
        return kind["reason"] or "as the delivery says"
    except DeliveryError:
        return "as the delivery says"


def _calibration_engine(cal: dict) -> dict:
    """engine, CASA version and why, from calibration.json (alma-regen/calibration/1)."""
    plan = cal.get("plan") or {}
    casa = (plan.get("casa") or {}).get("casa") or {}
    return {"engine": plan.get("engine"), "reason": plan.get("reason"), "casa": casa.get("version"),
            "casa_reason": (plan.get("casa") or {}).get("reason")}


def _fidelity_summary(doc) -> dict | None:
    if not doc:
        return None
    return {"ok": doc["ok"], "summary": doc["summary"], "tolerances": doc["tolerances"],
            "images": [{"image": e["image"], "status": e["status"], "counterpart": e.get("counterpart"),
                        "failures": e.get("failures", []),
                        "peak": (e.get("checks") or {}).get("peak"),
                        "diff_rms_sigma": ((e.get("checks") or {}).get("difference") or {}).get("diff_rms_sigma")}
                       for e in doc["images"]]}


def read_manifest(client, to: str, mous: str, run: str) -> dict | None:
    """The manifest of a published run, or None (then the run is not published)."""
    from botocore.exceptions import ClientError
    bucket, prefix = parse_s3_url(to)
    mkey = s3_key(prefix, naming.uid_to_file(mous), run, "manifest.json")
    try:
        return json.loads(client.get_object(Bucket=bucket, Key=mkey)["Body"].read())
    except ClientError as exc:
        if is_missing(exc):
            return None
        raise _classify(exc, f"GET s3://{bucket}/{mkey}") from None
