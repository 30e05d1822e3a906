"""Stage a MOUS: README, auxiliary and product tars, and every raw ASDM, into the member folder.

On disk, for an EB `<EB>` of member folder M (`Member.of(workdir, mous)`, alma_regen.member):
    M/raw/<EB>.asdm.sdm/                 the ASDM, renamed in only once verified
    M/raw/.<EB>.asdm.sdm.staged.json     the stamp, next to the ASDM (hidden, so nothing that
                                         lists raw/ for ASDMs trips over it): file, size, sha256
                                         of the tar stream, source URL, ETag/Last-Modified,
                                         time, and the tree's file count and bytes
    M/raw/.<EB>.asdm.sdm.partial/        while staging: tree/ (extracted so far), state.json and
                                         skeleton.bin (the resume checkpoint, see tarstream)
    M/raw/.<EB>.asdm.sdm.lock            the flock() of whoever stages this EB
The README and the auxiliary/product tars use `M/.<archive file name>.{staged.json,partial,lock}`.

One file is staged as: lock -> skip if the stamp matches -> resume the partial state if it
belongs to the same remote file, else start fresh -> stream (untar + sha256 while
downloading; Range/If-Range after a drop, in-process retries while bytes keep coming) ->
check byte count and end-of-archive blocks -> validate the ASDM -> swap into place ->
write the stamp -> remove the partial state. A transient failure keeps the partial
state for the next try; a permanent one removes it and leaves what was in place untouched.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Optional

from .. import naming
from ..errors import AlmaRegenError, DeliveryError, NoSpaceError, PermanentError, TransientError
from ..member import Member
from .datalink import RemoteFile
from .errors import Interrupted, NotFoundError, SourceChangedError, TooSlowError
from .layout import ASDM, AUXILIARY, PACKAGE, PRODUCT, README, MemberLayout
from .missing import MISSING_EBS, read_missing_ebs, write_missing_ebs  # noqa: F401  (this module's API too)
from .lock import file_lock
from .progress import Progress, RateFloor, human
from .tarstream import ResumeError, TarStreamExtractor

log = logging.getLogger("alma_regen.staging")

_PROJ = r"\d{4}\.\d\.\d{5}\.[A-Z]+"
_UIDF = r"uid___A\d{3}_X[0-9a-fA-F]+_X[0-9a-fA-F]+"
# Cycle 0 product tars are named by delivery date, not by MOUS: `2011.0.00121.S_2012-07-30_001_of_002.tar`
# (the archive's download scripts); the source's listing for the MOUS is what ties them to it.
_DATE = r"\d{4}-\d{2}-\d{2}"


@dataclass
class StageOptions:
    parallel: int = 2  # EBs downloaded at once
    lock_timeout: float = 3600.0  # wait this long for another run staging the same file
    progress_interval: float = 5.0
    checkpoint_bytes: int = 64 << 20  # resume state written at least this often...
    checkpoint_seconds: float = 0.5  # ...and this often: bounds what a kill re-fetches
    max_attempts: int = 6  # in-process retries in a row without any progress
    backoff: float = 0.5
    pipeline_depth: int = 4  # read buffers (stage.BUFFER) between the network thread and the disk/hash threads
    # Give up on a source sending less than `min_rate_bps` over `min_rate_window_s` (0: never):
    # a trickling server must not hold a worker forever; the partial state is kept for a resume.
    min_rate_bps: float = 0.0
    min_rate_window_s: float = 120.0
    # Set to stop: every transfer checks it at least every `poll_s` and stops, keeping its
    # partial state (the CLI sets it on Ctrl-C; stage_mous makes one when none is given).
    cancel: Optional[threading.Event] = None
    poll_s: float = 0.2
    # A PPR EB the archive lacks: False (scriptForPI's behaviour) warns, records it in the
    # member folder (MISSING_EBS) and stages the rest; True makes it an error.
    require_all_ebs: bool = False


# ------------------------------------------------------------------ listing
@dataclass
class MousFiles:
    """A MOUS's files in a source's listing.

    `auxiliary` None: a Cycle 0-4 package, whose product tars (`products`) hold script/,
    calibration/, qa/ or qa2/, log/ and the README besides product/ (staged as PACKAGE)."""
    mous: str
    project: str
    readme: Optional[RemoteFile] = None
    auxiliary: Optional[RemoteFile] = None
    products: list = field(default_factory=list)
    asdms: dict = field(default_factory=dict)  # EB uid -> RemoteFile
    errors: list = field(default_factory=list)  # (ID, error_message) of DataLink rows the archive refused

    @property
    def product_kind(self) -> str:
        """How the product tars are staged: PRODUCT beside an auxiliary tar, else PACKAGE."""
        return PRODUCT if self.auxiliary is not None else PACKAGE

    def all_files(self) -> list:
        """Every file of the MOUS in the listing (what a manifest's inputs name)."""
        return [f for f in (self.readme, self.auxiliary) if f] + list(self.products) + list(self.asdms.values())


def classify(files: Iterable[RemoteFile], mous: str) -> MousFiles:
    """Sort a source's listing into the MOUS's README, tars and ASDMs, by archive file name.

    Cycle 5 on: an auxiliary tar and product tars. Cycles 0-4: product tars only (dated names
    in Cycle 0), which then carry the scripts and calibration (MousFiles.product_kind)."""
    m = naming.uid_to_file(mous)
    readme, aux, products, asdms = None, None, [], {}
    projects = set()
    for f in files:
        if f.name == naming.readme_name(mous):
            readme = f
        elif (r := re.match(rf"^({_PROJ})_{m}_auxiliary\.tar$", f.name)):
            aux = f
            projects.add(r[1])
        elif (r := re.match(rf"^({_PROJ})_(?:{m}|{_DATE})_\d{{3}}_of_\d{{3}}\.tar$", f.name)):
            products.append(f)
            projects.add(r[1])
        elif (r := re.match(rf"^(?:({_PROJ})_)?({_UIDF})\.asdm\.sdm\.tar$", f.name)):
            # `<project>_<EB>.asdm.sdm.tar`, or the bare `<EB>.asdm.sdm.tar` the old request handler
            # served (its download scripts, kept in astroquery's test data): a bare one (key None)
            # belongs to the listing's project; the prefixed name of the same EB wins.
            if f.semantics in ("", "#progenitor"):
                asdms.setdefault(r[1], {})[naming.file_to_uid(r[2])] = f
    errors = list(getattr(files, "errors", []))
    aux_refused = _said_about(errors, f"_{m}_auxiliary.tar")
    if aux is None and (aux_refused or not products):
        # An auxiliary tar the archive answered with an error is missing, not an old package.
        raise NotFoundError(f"{mous}: the source lists " + (
            f"no {naming.auxiliary_tar('<project>', mous)}" if aux_refused else
            f"neither {naming.auxiliary_tar('<project>', mous)} nor product tars "
            f"({naming.product_tar('<project>', mous)}, or Cycle 0's <project>_<date>_001_of_<N>.tar)")
            + ": no scripts or calibration to stage" + _archive_said(errors, aux_refused or _needed_aux(errors, mous)))
    if len(projects) != 1:
        raise PermanentError(f"{mous}: the listing names several projects: {sorted(projects)}")
    project = projects.pop()
    if aux is None:
        log.info("%s: no auxiliary tar: an old (Cycle 0-4) package, scripts and calibration come in the "
                 "product tars %s", mous, ", ".join(f.name for f in products))
    return MousFiles(mous, project, readme, aux, sorted(products, key=lambda f: f.name),
                     {**asdms.get(None, {}), **asdms.get(project, {})}, errors)


def _needed_aux(errors: list, mous: str) -> list:
    """The error rows that speak of the MOUS's auxiliary or product tars."""
    m = naming.uid_to_file(mous)
    return [e for e in errors if re.search(rf"_{m}_(?:auxiliary|\d{{3}}_of_\d{{3}})\.tar", " ".join(e))]


def check_uid(uid: str, what: str = "MOUS") -> str:
    """The uid as given, or a one-line error: the whole string must be a uid (no trailing newline,
    which naming's `$` would let through and the archive would then be asked for)."""
    if not isinstance(uid, str) or not (naming.UID_RE.fullmatch(uid) or naming.FILE_UID_RE.fullmatch(uid)):
        raise PermanentError(f"not an ALMA {what} uid: {str(uid)[:120]!r} (expected uid://A001/X.../X..., "
                             "nothing before or after it)")
    return uid


def list_mous(source, mous: str) -> MousFiles:
    check_uid(mous)  # a clear error for a malformed uid
    return classify(source.list_files(mous), mous)


def _archive_said(errors: list, about: Optional[list] = None) -> str:
    """What the DataLink answer's error rows said (rows dropped by the parser), for a 'missing' error:
    the rows `about` the missing file when some name it, else every error row."""
    errors = about or errors
    return f" (the archive answered errors for: {_rows(errors)})" if errors else ""


def _rows(errors: list) -> str:
    return "; ".join(f"{i}: {m}" for i, m in errors[:3]) + (f"; {len(errors) - 3} more" if len(errors) > 3 else "")


def _said_about(errors: list, *names: str) -> list:
    """The error rows whose ID or access URL names one of `names` (a file name or a uid)."""
    return [e for e in errors if any(n and n in " ".join(e) for n in names)]


def ppr_ebs(member: Member) -> Optional[list]:
    """The EBs the PPR lists (the member's delivery model, read once the auxiliary tar is in place);
    None to use the listing."""
    try:
        ebs = member.delivery.ppr_ebs()
    except DeliveryError as exc:
        log.warning("no EB list from the PPR (%s); staging every ASDM of the listing", exc)
        return None
    return [naming.file_to_uid(naming.uid_to_file(e)) for e in ebs]


# ------------------------------------------------------------------ on-disk names
@dataclass
class Slot:
    """Where one archive file goes and its bookkeeping files."""
    kind: str
    rfile: RemoteFile
    member: Member
    eb: Optional[str] = None

    @property
    def root(self) -> Path:
        return self.member.root

    @property
    def base(self) -> Path:
        return self.member.staging_base(self.rfile.name, self.eb if self.kind == ASDM else None)

    stamp = property(lambda s: s.base.with_name(s.base.name + ".staged.json"))
    partial = property(lambda s: s.base.with_name(s.base.name + ".partial"))
    lock = property(lambda s: s.base.with_name(s.base.name + ".lock"))

    def targets(self, tree: Optional[Path] = None) -> list:
        """The paths this file fills in the member folder (from the extracted tree if given)."""
        if self.kind == ASDM:
            return [self.member.asdm(self.eb)]
        if self.kind == README:
            return [self.root / self.rfile.name]
        if tree is not None:
            return [self.root / p.relative_to(tree) for p in self.pieces(tree)]
        return [self.root / t for t in self.stamp_targets()]

    def pieces(self, tree: Path) -> list:
        """What of the extracted tree is swapped in, each to the same path under the member folder.
        The auxiliary tar's folders whole; product tars one level down (product/<file>), as the
        `_001_of_002` and `_002_of_002` tars of one MOUS share product/ (and, in an old package,
        script/, calibration/...): one tar must not replace what another brought."""
        tops = sorted(tree.iterdir())
        if self.kind not in (PRODUCT, PACKAGE):
            return tops
        return [q for p in tops for q in (sorted(p.iterdir()) if p.is_dir() and not p.is_symlink() else [p])]

    def stamp_targets(self) -> list:
        try:
            return json.loads(self.stamp.read_text()).get("targets", [])
        except (OSError, ValueError):
            return []


def _tree_summary(paths: list) -> dict:
    files = size = 0
    for p in paths:
        if p.is_file():
            files, size = files + 1, size + p.stat().st_size
            continue
        for root, _dirs, names in os.walk(p):
            for n in names:
                files += 1
                size += os.lstat(os.path.join(root, n)).st_size
    return {"files": files, "bytes": size}


def stamp_matches(slot: Slot, source) -> Optional[dict]:
    """The stamp if the file is already staged from this same remote file and still complete.

    Same name and size, same ETag/Last-Modified as the source has now (a HEAD for HTTP,
    the listing for S3), and the staged tree still has the recorded file count and bytes.
    """
    try:
        stamp = json.loads(slot.stamp.read_text())
    except (OSError, ValueError):
        return None
    f = slot.rfile
    if stamp.get("file") != f.name or stamp.get("size") != f.size:
        return None
    targets = [slot.root / t for t in stamp.get("targets", [])]
    if not targets or not all(t.exists() for t in targets):
        return None
    if _tree_summary(targets) != stamp.get("tree"):
        return None
    etag, last_modified = source.validators(f)
    if (etag and stamp.get("etag") and etag != stamp["etag"]) or \
            (last_modified and stamp.get("last_modified") and last_modified != stamp["last_modified"]):
        return None
    return stamp


# ------------------------------------------------------------------ sinks
class ThreadedSha256:
    """sha256 in its own thread: hashlib releases the GIL, so hashing overlaps the disk writes.

    A buffer handed to update() must not change until it is hashed: `ticket()` after an
    update names it, `wait(ticket)` returns once it is (the pipeline reuses its buffers so).
    """

    def __init__(self, depth: int = 8):
        self._h = hashlib.sha256()
        self._q: queue.Queue = queue.Queue(depth)
        self._queued = self._hashed = 0
        self._cv = threading.Condition()
        self._t = threading.Thread(target=self._run, name="stage-sha256", daemon=True)
        self._t.start()

    def _run(self) -> None:
        while (data := self._q.get()) is not None:
            self._h.update(data)
            with self._cv:
                self._hashed += 1
                self._cv.notify_all()

    def update(self, data) -> None:
        self._queued += 1  # only the feeding thread updates
        self._q.put(data)

    def ticket(self) -> int:
        """The number of the last update: wait(ticket) returns once it is hashed."""
        return self._queued

    def wait(self, ticket: int, timeout: Optional[float] = None) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: self._hashed >= ticket or not self._t.is_alive(), timeout)

    def close(self) -> None:
        if self._t.is_alive():
            self._q.put(None)
            self._t.join()

    def hexdigest(self) -> str:
        self.close()
        return self._h.hexdigest()


class FileSink:
    """A plain file (the README) with the extractor's feed/checkpoint/resume interface."""

    def __init__(self, partial: Path, name: str, resume: bool = False):
        self.dir = partial / "tree"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / name
        self.state = partial / "state.json"
        self.sha = ThreadedSha256()
        self.offset = 0
        if resume:
            st = json.loads(self.state.read_text())
            os.truncate(self.path, st["offset"])
            with open(self.path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    self.sha.update(chunk)
            self.offset = st["offset"]
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)

    def feed(self, data) -> None:
        mv = memoryview(data)
        self.sha.update(mv)
        while mv:
            mv = mv[os.write(self.fd, mv):]
        self.offset += len(data)

    def checkpoint(self, identity: dict) -> bool:
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"identity": identity, "offset": self.offset}))
        os.replace(tmp, self.state)
        return True

    def finish(self) -> str:
        self.close()
        return self.sha.hexdigest()

    def close(self) -> None:
        self.sha.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _saved_identity(partial: Path) -> Optional[dict]:
    return TarStreamExtractor.saved_identity(partial)


def _new_sink(slot: Slot, project: str, mous: str, resume: bool):
    partial = slot.partial
    if slot.kind == README:
        try:
            return FileSink(partial, slot.rfile.name, resume=resume)
        except (OSError, ValueError, KeyError) as exc:
            raise ResumeError(str(exc)) from None
    layout = MemberLayout(slot.kind, project, mous, slot.eb)
    if resume:
        return TarStreamExtractor.resume(partial / "tree", layout, slot.rfile.name, partial, ThreadedSha256())
    return TarStreamExtractor(partial / "tree", layout, slot.rfile.name, partial, ThreadedSha256())


# ------------------------------------------------------------------ transfer
def _check_cancel(opts: StageOptions, name: str) -> None:
    if opts.cancel is not None and opts.cancel.is_set():
        raise Interrupted(f"{name}: interrupted; the partial download is kept for a resume")


# Bytes per read buffer. 1 MiB: few Python steps per GB, and the buffers in flight stay in the
# CPU's cache between the socket copy, the hash and the write (4 MiB buffers cost 40% more CPU
# per byte in bench/staging.py on the 2-core test machine: each byte went through memory twice).
BUFFER = 1 << 20
FILL_S = 0.05  # a buffer is handed on once full or after this long: a slow link feeds promptly


class _Buffers:
    """The pipeline's read buffers, reused in turn (no allocation per read).

    A buffer goes back to the reader once the consumer is done with it (it asked for the next
    one) and, with a threaded hasher, once its bytes are hashed (hasher.ticket/wait).
    """

    def __init__(self, count: int, size: int, hasher=None):
        self.count, self.size = count, size
        self.views: list = []
        self._free: deque = deque()
        self._held: deque = deque()  # (index, hasher ticket) given back by the consumer
        self._ticket = getattr(hasher, "ticket", None)
        self._hasher = hasher
        self._cv = threading.Condition()

    def take(self, stop: threading.Event) -> Optional[int]:
        """A buffer for the reader (its index); None once `stop` is set."""
        while not stop.is_set():
            with self._cv:
                if self._free:
                    return self._free.popleft()
                if len(self.views) < self.count:
                    self.views.append(memoryview(bytearray(self.size)))
                    return len(self.views) - 1
                if not self._held:
                    self._cv.wait(0.2)
                    continue
                i, ticket = self._held[0]
            if self._hasher.wait(ticket, 0.2):
                with self._cv:
                    self._held.popleft()
                return i
        return None

    def give_back(self, i: int) -> None:
        """The consumer is done with buffer i (the hasher may still be reading it)."""
        with self._cv:
            if self._ticket is None:
                self._free.append(i)
            else:
                self._held.append((i, self._ticket()))
            self._cv.notify()


def _fill(body, view, fill_s: float) -> tuple:
    """Read into `view`: the first bytes, then what keeps arriving without a wait, until it is
    full or `fill_s` passed (a trickle is handed on as it comes, a fast stream in full buffers).

    (bytes read, None), (0, None) at the end; an error after some bytes comes back beside
    them, (n, error), so the bytes before a dropped connection are kept (the resume starts
    after them).
    """
    n = body.readinto(view)
    if n:
        deadline = time.monotonic() + fill_s
        while n < len(view) and time.monotonic() < deadline and body.ready():
            try:
                k = body.readinto(view[n:])
            except Exception as exc:  # noqa: BLE001 - raised by the consumer after the bytes
                return n, exc
            if not k:
                break
            n += k
    return n, None


def _pipelined(body, depth: int, tick=None, poll_s: float = 0.2, hasher=None, size: Optional[int] = None,
               fill_s: float = FILL_S):
    """Read the body in a thread, so the network and the disk/hash work overlap (two cores).

    Yields memoryviews of `depth` + 2 buffers of `size` bytes, filled by the reader thread
    straight from the socket and reused: the consumer must be done with a view when it asks
    for the next one; a threaded `hasher` given here is waited for before a buffer is reused.
    `tick(n)` is called with each chunk's size, and with 0 every `poll_s` while nothing
    arrives, so a stop request or a rate floor is seen even on a silent connection.
    """
    size = size or BUFFER
    size = max(min(size, getattr(body, "length", size)), 1)
    bufs = _Buffers(depth + 2, size, hasher)
    q: queue.Queue = queue.Queue()  # bounded by the buffers
    stop = threading.Event()
    END = object()

    def produce():
        try:
            while (i := bufs.take(stop)) is not None:
                n, error = _fill(body, bufs.views[i], fill_s)
                if n:
                    q.put((i, n))
                if error is not None:
                    raise error
                if not n:
                    break
            item = END
        except BaseException as exc:  # handed to the consumer, raised at the right offset
            item = exc
        q.put(item)

    t = threading.Thread(target=produce, name="stage-reader", daemon=True)
    t.start()
    try:
        while True:
            try:
                item = q.get(timeout=poll_s)
            except queue.Empty:
                if tick:
                    tick(0)
                continue
            if item is END:
                return
            if isinstance(item, BaseException):
                raise item
            i, n = item
            if tick:
                tick(n)
            yield bufs.views[i][:n]
            bufs.give_back(i)
    finally:
        stop.set()
        body.close()  # unblocks a reader waiting on the socket
        t.join(timeout=30)


def _transfer(slot: Slot, source, project: str, mous: str, opts: StageOptions) -> tuple:
    """Download + untar one file into slot.partial; return (sha256, identity, sink)."""
    f = slot.rfile
    identity = {"name": f.name, "url": f.url, "size": f.size, "etag": f.etag, "last_modified": ""}
    sink = None
    saved = _saved_identity(slot.partial)
    if saved and all(saved.get(k) == identity[k] for k in ("name", "url", "size")) \
            and (not f.etag or saved.get("etag") == f.etag):
        try:
            sink = _new_sink(slot, project, mous, resume=True)
            identity.update(etag=saved.get("etag", ""), last_modified=saved.get("last_modified", ""))
            log.info("%s: resuming at byte %d of %d (%s on disk re-hashed)", f.name, sink.offset, f.size,
                     human(sink.offset))
        except ResumeError as exc:
            log.warning("%s: cannot resume (%s); starting again", f.name, exc)
            sink = None
    if sink is None:
        shutil.rmtree(slot.partial, ignore_errors=True)
        sink = _new_sink(slot, project, mous, resume=False)
    progress = Progress(f.name, f.size, sink.offset, opts.progress_interval)
    floor = RateFloor(f.name, opts.min_rate_bps, opts.min_rate_window_s)

    def tick(n: int) -> None:
        _check_cancel(opts, f.name)
        floor.add(n)

    fetched = 0  # bytes received in this run (for the summary)
    attempts = 0
    try:
        while sink.offset < f.size:
            before = sink.offset
            try:
                tick(0)
                body = source.open(f, sink.offset, identity["etag"], identity["last_modified"])
                if body.start != sink.offset:
                    log.warning("%s: the source changed since byte 0 was fetched (ETag/Last-Modified); "
                                "restarting from byte 0", f.name)
                    sink.close()
                    shutil.rmtree(slot.partial, ignore_errors=True)
                    sink = _new_sink(slot, project, mous, resume=False)
                    progress = Progress(f.name, f.size, 0, opts.progress_interval)
                identity.update(etag=body.etag or identity["etag"],
                                last_modified=body.last_modified or identity["last_modified"])
                sink.checkpoint(identity)
                last_ck, last_t = sink.offset, time.monotonic()
                for chunk in _pipelined(body, opts.pipeline_depth, tick, opts.poll_s, sink.sha):
                    sink.feed(chunk)
                    fetched += len(chunk)
                    progress.update(sink.offset)
                    if sink.offset - last_ck >= opts.checkpoint_bytes or \
                            time.monotonic() - last_t >= opts.checkpoint_seconds:
                        if sink.checkpoint(identity):
                            last_ck, last_t = sink.offset, time.monotonic()
            except (SourceChangedError, Interrupted, TooSlowError):
                raise  # a fresh listing must resolve it (the DAG's retry re-lists), or stop now
            except TransientError as exc:
                sink.checkpoint(identity)
                attempts = 0 if sink.offset > before else attempts + 1
                if attempts >= opts.max_attempts:
                    raise TransientError(f"{f.name}: giving up after {attempts} tries without progress "
                                         f"at byte {sink.offset} of {f.size}: {exc}") from None
                delay = max(getattr(exc, "retry_after", 0.0), min(opts.backoff * 2 ** max(attempts - 1, 0), 30.0))
                log.warning("%s: %s; resuming at byte %d in %.1f s", f.name, exc, sink.offset, delay)
                if opts.cancel is not None:
                    opts.cancel.wait(delay)
                else:
                    time.sleep(delay)
        sha = sink.finish()
    except OSError as exc:
        sink.close()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpaceError(f"{f.name}: no space left in {slot.partial.parent} "
                               f"after byte {sink.offset}") from None
        raise
    except BaseException:
        try:
            sink.checkpoint(identity)
        except Exception:
            pass
        sink.close()
        raise
    rate = progress.rate(sink.offset)
    log.info("%s: %s fetched and verified, %s/s, sha256 %s", f.name, human(f.size), human(rate), sha)
    return sha, identity, fetched


def _swap_in(new: Path, dest: Path) -> None:
    """Put `new` at `dest`; whatever was there is removed only once the new one is in place."""
    dest.parent.mkdir(parents=True, exist_ok=True)  # product/ for product/<file> (Slot.pieces)
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.rename(dest, old)
        os.rename(new, dest)
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    else:
        os.rename(new, dest)


def _check_space(where: Path, need: int, what: str) -> None:
    free = shutil.disk_usage(where).free
    margin = 64 << 20
    if free < need + margin:
        raise NoSpaceError(f"{what}: needs {human(need)} in {where}, only {human(free)} free")


def _disk_error(exc: OSError, what: str) -> PermanentError:
    """An OS error of the member folder as one line (read-only, a file in the way, no space)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(f"{what}: no space left ({exc.filename or ''})")
    where = f" {exc.filename}" if exc.filename else ""
    return PermanentError(f"{what}: cannot write{where}: {exc.strerror or type(exc).__name__}")


def prepare_member(workdir, mous: str) -> Member:
    """The member folder, created; a one-line error when the workdir cannot hold it."""
    work = Path(workdir)
    if work.exists() and not work.is_dir():
        raise PermanentError(f"workdir {work} is a file, not a folder")
    member = Member.of(work, mous)
    try:
        member.root.mkdir(parents=True, exist_ok=True)
        # Writable? (mkdir of an existing folder says nothing; a read-only mount or mode
        # would otherwise surface later as a traceback from deep inside a transfer.)
        probe = member.root / f".write-test-{os.getpid()}-{threading.get_ident()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise _disk_error(exc, f"workdir {work}") from None
    return member


def stage_file(slot: Slot, source, project: str, mous: str, opts: Optional[StageOptions] = None) -> dict:
    """Stage one archive file into its slot (idempotent, resumable, locked)."""
    try:
        return _stage_file(slot, source, project, mous, opts or StageOptions())
    except OSError as exc:  # the disk side: read-only, a file where a folder should be...
        raise _disk_error(exc, slot.rfile.name) from None


def _stage_file(slot: Slot, source, project: str, mous: str, opts: StageOptions) -> dict:
    f = slot.rfile
    _check_cancel(opts, f.name)
    slot.partial.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with file_lock(slot.lock, opts.lock_timeout, f.name):
        stamp = stamp_matches(slot, source)
        if stamp:
            log.info("%s: already staged (sha256 %s), skipped", f.name, stamp.get("sha256", "?")[:16])
            return dict(stamp, status="skipped", seconds=round(time.monotonic() - t0, 3), fetched=0)
        _check_space(slot.partial.parent, f.size, f.name)
        try:
            sha, identity, fetched = _transfer(slot, source, project, mous, opts)
            tree = slot.partial / "tree"
            if slot.kind == ASDM:
                info = _validate(tree, slot)
            news = slot.pieces(tree) if slot.kind != ASDM else [tree]
            targets = slot.targets(tree) if slot.kind != ASDM else slot.targets()
        except (PermanentError, ResumeError, SourceChangedError):
            # SourceChangedError: the bytes so far belong to another version of the file (or
            # the server sent more than listed): a resume from them would be wrong.
            shutil.rmtree(slot.partial, ignore_errors=True)
            raise
        slot.stamp.unlink(missing_ok=True)  # no stamp while the swap is under way
        for new, dest in zip(news, targets):
            _swap_in(new, dest)
        stamp = {
            "file": f.name, "kind": slot.kind, "size": f.size, "sha256": sha, "source": f.url,
            "etag": identity["etag"], "last_modified": identity["last_modified"],
            "staged_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "targets": [str(t.relative_to(slot.root)) for t in targets],
            "tree": _tree_summary(targets),
        }
        if slot.kind == ASDM:
            stamp["eb"] = slot.eb
            stamp["asdm"] = {k: v for k, v in info.as_dict().items() if k != "path"}
        tmp = slot.stamp.with_name(slot.stamp.name + ".tmp")
        tmp.write_text(json.dumps(stamp, indent=1))
        os.replace(tmp, slot.stamp)
        shutil.rmtree(slot.partial, ignore_errors=True)
        return dict(stamp, status="staged", seconds=round(time.monotonic() - t0, 3), fetched=fetched)


def _validate(tree: Path, slot: Slot):
    from ..asdm import validate_asdm
    try:
        info = validate_asdm(tree)
    except DeliveryError as exc:
        raise DeliveryError(slot.rfile.name, f"staged ASDM is not valid: {str(exc).split(': ', 1)[-1]}") from None
    if info.eb_uid and info.eb_uid != slot.eb:
        raise DeliveryError(slot.rfile.name, f"holds EB {info.eb_uid}, expected {slot.eb}")
    return info


# ------------------------------------------------------------------ per MOUS
def _summary(result: dict) -> dict:
    keys = ("file", "kind", "size", "sha256", "status", "seconds", "fetched", "targets", "eb")
    return {k: result[k] for k in keys if k in result}


def stage_auxiliary(mous: str, source, workdir, opts: Optional[StageOptions] = None,
                    listing: Optional[MousFiles] = None) -> dict:
    """Stage README, auxiliary tar and product tars; return a summary with the EBs to stage."""
    listing = listing or list_mous(source, mous)
    return _stage_auxiliary(prepare_member(workdir, mous), mous, source, opts or StageOptions(), listing)


def _stage_auxiliary(member: Member, mous: str, source, opts: StageOptions, listing: MousFiles) -> dict:
    results = []
    if listing.readme is None:
        log.warning("%s: the source lists no README", mous)
    else:
        results.append(stage_file(Slot(README, listing.readme, member), source, listing.project, mous, opts))
    if listing.auxiliary is not None:
        results.append(stage_file(Slot(AUXILIARY, listing.auxiliary, member), source, listing.project, mous, opts))
    for p in listing.products:
        results.append(stage_file(Slot(listing.product_kind, p, member), source, listing.project, mous, opts))
    if listing.auxiliary is None and not member.script.is_dir():
        raise NotFoundError(f"{mous}: the source lists no {naming.auxiliary_tar(listing.project, mous)}, and its "
                            f"product tars ({', '.join(p.name for p in listing.products)}) hold no script/ as an "
                            "old (Cycle 0-4) package does: no scripts or calibration to regenerate from"
                            + _archive_said(listing.errors))
    # The auxiliary tar (or, in an old package, the product tars) is in place now: the member's
    # delivery model is read from here on.
    ebs, missing = ebs_to_stage(member, listing, opts.require_all_ebs)
    return {"mous": mous, "project": listing.project, "member_dir": str(member.root),
            "ebs": ebs, "missing_ebs": missing, "files": [_summary(r) for r in results]}


def ebs_to_stage(member: Member, listing: MousFiles, require_all: bool = False) -> tuple:
    """(the PPR's EBs the source has, the PPR's EBs it lacks), or every ASDM listed when no PPR
    model exists.

    An EB the source lacks is what scriptForPI warns about and goes on without ("Will try to
    proceed with the rest"): a warning naming what the archive said, and a record in the member
    folder (`MISSING_EBS`, read by the plan and the published manifest). `require_all` makes it
    an error, as is a PPR none of whose EBs the source has."""
    ebs = ppr_ebs(member)
    if ebs is None:
        write_missing_ebs(member.root, [])
        return sorted(listing.asdms), []
    missing = []
    for eb in ebs:
        if eb in listing.asdms:
            continue
        name = naming.asdm_tar(listing.project, eb)
        about = _said_about(listing.errors, name, naming.uid_to_file(eb), eb)
        said = f"the archive answered {_rows(about)}" if about else "not listed" + _archive_said(listing.errors)
        missing.append({"eb": eb, "file": name, "archive": said})
    if missing and (require_all or len(missing) == len(ebs)):
        why = "" if require_all else " (none of its EBs: nothing to regenerate)"
        raise NotFoundError(f"{listing.mous}: the PPR lists EB(s) the source does not have{why}: "
                            + "; ".join(f"{m['file']}: {m['archive']}" for m in missing))
    for m in missing:
        log.warning("%s: the PPR lists EB %s, which %s does not provide (%s): going on with the other EBs, as "
                    "scriptForPI does; the run is partial (require_all_ebs makes this an error)",
                    listing.mous, m["eb"], "the source", m["archive"])
    write_missing_ebs(member.root, missing)
    return [eb for eb in ebs if eb in listing.asdms], [m["eb"] for m in missing]


def stage_eb(mous: str, eb: str, source, workdir, opts: Optional[StageOptions] = None,
             listing: Optional[MousFiles] = None) -> dict:
    """Stage one EB's raw ASDM into raw/ (the per-EB mapped task)."""
    eb = naming.file_to_uid(naming.uid_to_file(check_uid(eb, "EB")))
    check_uid(mous)
    listing = listing or list_mous(source, mous)
    rfile = listing.asdms.get(eb)
    if rfile is None:
        name = naming.asdm_tar(listing.project, eb)
        raise NotFoundError(f"{name}: not listed by {source.describe()}"
                            + _archive_said(listing.errors, _said_about(listing.errors, name, eb)))
    member = prepare_member(workdir, mous)
    return _summary(stage_file(Slot(ASDM, rfile, member, eb), source, listing.project, mous, opts))


def stage_mous(mous: str, source, workdir, opts: Optional[StageOptions] = None) -> dict:
    """`alma-regen stage`: the whole MOUS, EBs in parallel (bounded by opts.parallel)."""
    opts = opts or StageOptions()
    if opts.cancel is None:
        opts = replace(opts, cancel=threading.Event())
    t0 = time.monotonic()
    check_uid(mous)
    member = prepare_member(workdir, mous)  # before the listing: a bad workdir is the user's first error
    listing = list_mous(source, mous)
    summary = _stage_auxiliary(member, mous, source, opts, listing)
    ebs = summary["ebs"]
    pending = [Slot(ASDM, listing.asdms[eb], member, eb) for eb in ebs]
    need = sum(s.rfile.size for s in pending if not stamp_matches(s, source))
    if need:
        _check_space(member.root, need, f"{mous} raw ASDMs")
    results, errors = [], []
    pool = ThreadPoolExecutor(max(1, opts.parallel), thread_name_prefix="stage-eb")
    futures = [(s, pool.submit(stage_file, s, source, listing.project, mous, opts)) for s in pending]
    try:
        for slot, fut in futures:
            try:
                results.append(_summary(fut.result()))
            except AlmaRegenError as exc:
                errors.append((slot, exc))
    except BaseException:
        # Ctrl-C (KeyboardInterrupt) or any other exit of this thread: queued EBs never start,
        # running ones stop at their next chunk or poll and keep their partial state.
        opts.cancel.set()
        pool.shutdown(wait=False, cancel_futures=True)
        # (a cancelled future never counts as done for wait(): leave those out)
        wait([fut for _, fut in futures if not fut.cancelled()], timeout=30)
        raise
    pool.shutdown(wait=True)
    if errors:
        # Report a permanent fault first: retrying would not clear it. The others are logged.
        chosen = next((e for _, e in errors if isinstance(e, PermanentError)), errors[0][1])
        for slot, exc in errors:
            if exc is not chosen:
                log.warning("%s also failed: %s", slot.rfile.name, exc)
        raise chosen
    summary["files"] += results
    summary["source"] = source.describe()
    summary["fetched_bytes"] = sum(r.get("fetched", 0) for r in summary["files"])
    summary["seconds"] = round(time.monotonic() - t0, 3)
    return summary
