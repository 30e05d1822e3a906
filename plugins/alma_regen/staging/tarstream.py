"""Untar a stream while it downloads: a push parser that checks, writes and hashes.

Bytes are `feed()`-ed in order, in chunks of any size (an HTTP body, S3 parts).
Each chunk is hashed (sha256 of the whole stream) and parsed: 512-byte
headers (ustar, GNU long names, pax), file data written straight to disk,
padding. Nothing of the tar itself is stored, so a 20 GB ASDM needs no 20 GB
spool and memory stays at one chunk.

Safety: every member name goes through `mapper` (which strips the
`<project>/science_goal../group../member../` prefix and refuses names outside
the expected subtree) and through our own checks (absolute paths, `..`,
devices, FIFOs, setuid/setgid, names longer than the file system takes,
members colliding with an earlier one of the same path, writing through a
symlink), then tarfile's `data_filter` as a second opinion (links resolving
outside `dest`). Files are created with O_EXCL|O_NOFOLLOW, so nothing already
on disk is overwritten or followed. Every refusal is a HostileTarError of one line.

Links. A symlink is checked when it is made, but a later link can re-aim it:
`L0 -> L1/..` is inside while L1 does not exist, and `L1 -> .` then makes L0
climb a level (a chain of 14 such links reached `/`); links of two archive
tars of one MOUS land in the same member folder and can do the same to each
other. ALMA's archive tars (ASDMs, auxiliary, products) hold no symlinks at
all, so only the one kind of symlink that no other link can re-aim is kept: a
relative target without `..` (it can only point down into its own folder, and
a chain of such links only goes further down). Absolute targets and targets
with `..` are refused, whatever they resolve to today. Hard links must name a
regular file extracted before, reached without going through a symlink. When
the stream ends, every link under `dest` is resolved once more and must stay
inside (the invariant, checked on disk whatever the order of the members).

The end of the stream is checked: GNU tar and Python's tarfile both accept a
tar cut at a member boundary, so `finish()` requires the two zero blocks of
the end-of-archive marker (and nothing but zeros after them).

Resume across a process kill (the design):
hashlib's state cannot be saved, and the tar itself is not kept, so a
checkpoint records enough to *recompute* the hash from what is on disk:
  - `skeleton.bin`: every byte of the stream that is not file data (headers,
    long-name and pax blocks, padding), appended in stream order;
  - `state.json`: the stream offset, the members completed so far (path,
    header length, data size, padding length) and the member being written
    (how many data bytes are in its file), written atomically (tmp + rename).
On resume the stream up to the checkpoint is replayed into a fresh sha256 from
skeleton + extracted files (a disk read, much cheaper than a re-download),
sizes are checked, files created after the checkpoint are removed, the current
file is truncated to the checkpointed length, and parsing continues at that
offset: the caller asks the source for `Range: bytes=<offset>-`. Checkpoints
are taken in the middle of file data too, so a kill during a multi-GB binary
file re-fetches only what came after the last checkpoint (seconds of data).
Data files are not fsync'ed: a checkpoint survives the death of the process
(the page cache keeps the writes); after a power cut the size checks of the
replay catch truncated files, and a doubtful partial state is simply restarted.

Write-back. A big file's data is handed to the disk as it is written (every
WRITEBACK bytes, Linux's sync_file_range(SYNC_FILE_RANGE_WRITE): start writing,
do not wait), so the disk works while the rest downloads instead of after the
last byte, and the dirty pages of a 20 GB ASDM never pile up in memory until the
kernel throttles the writer. Staged means on disk: the final write-back is part
of the cost (bench/staging.py counts it), and this overlaps it with the transfer.
The calls are made by a thread of their own: sync_file_range waits when the
disk's queue is full (another process writing), and the extraction must not.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import queue
import stat
import tarfile
import threading
from pathlib import Path
from typing import Callable, Optional

from .errors import BadArchiveError, HostileTarError

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
MAX_EXT_HEADER = 1 << 20  # a longer pax/long-name header is an attack, not a file name
# Errors of the file system that a member's own name or type causes (a collision with
# an earlier member, a name too long): reported as a refusal of that member. Other
# OSErrors (ENOSPC, EIO) are the host's and propagate as they are.
_MEMBER_ERRNOS = frozenset((errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP,
                            errno.EINVAL, errno.EILSEQ))
STATE_VERSION = 1
WRITEBACK = 8 << 20  # a file's data is handed to the disk in windows of this size


def _writeback_call():
    """sync_file_range(2) from the C library (Linux); None elsewhere."""
    try:
        import ctypes
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError, ImportError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = []  # [the C function or None], looked up at the first big file (ctypes is not free)
_SYNC_FILE_RANGE_WRITE = 2  # start write-out of the range's dirty pages, do not wait


_WRITEBACK_QUEUE: "queue.Queue" = queue.Queue(64)  # (fd of our own, offset, length) for the thread
_WRITEBACK_THREAD: list = []
_WRITEBACK_LOCK = threading.Lock()


def _writeback_loop(fn) -> None:
    while True:
        fd, offset, length = _WRITEBACK_QUEUE.get()
        try:
            fn(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
        finally:
            os.close(fd)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Have [offset, offset + length) of `fd` written to the disk soon, without waiting (best
    effort: a platform without sync_file_range, or a disk so busy that 64 requests wait, leaves
    the pages to the kernel's own write-back)."""
    if not _sync_file_range:
        _sync_file_range.append(_writeback_call())
    fn = _sync_file_range[0]
    if fn is None or length <= 0:
        return
    with _WRITEBACK_LOCK:
        if not _WRITEBACK_THREAD:
            t = threading.Thread(target=_writeback_loop, args=(fn,), name="stage-writeback", daemon=True)
            t.start()
            _WRITEBACK_THREAD.append(t)
    own = os.dup(fd)  # the file may be closed before the thread gets to it
    try:
        _WRITEBACK_QUEUE.put_nowait((own, offset, length))
    except queue.Full:
        os.close(own)

# Parser modes.
HEADER, EXT, DATA, PAD, END = "header", "ext", "data", "pad", "end"

# mapper(name_without_trailing_slash, is_dir) -> path relative to dest ('' = dest itself),
# None to skip a directory entry of the prefix, or raise ValueError(why) to refuse it.
Mapper = Callable[[str, bool], Optional[str]]


def _inside(real: str, root: Path) -> bool:
    return real == str(root) or real.startswith(str(root) + os.sep)


class ResumeError(Exception):
    """The partial state on disk cannot be trusted: start again from byte 0."""


def _pad(n: int) -> int:
    return -n % BLOCK


def _short(name: str, n: int = 160) -> str:
    """A member name for a one-line message: a 5000-character name is cut in the middle."""
    return name if len(name) <= n else f"{name[:n // 2]}...({len(name)} characters)...{name[-n // 4:]}"


def _fs_limit(path, name: str, default: int) -> int:
    try:
        return os.pathconf(path, name)
    except (OSError, ValueError):
        return default


class TarStreamExtractor:
    def __init__(self, dest, mapper: Mapper, where: str, state_dir=None, hasher=None):
        self.dest = Path(os.path.realpath(dest))
        self.dest.mkdir(parents=True, exist_ok=True)
        self.name_max = _fs_limit(self.dest, "PC_NAME_MAX", 255)
        self.path_max = _fs_limit(self.dest, "PC_PATH_MAX", 4096)
        self.mapper = mapper
        self.where = where  # the archive file name, for messages
        self.state_dir = Path(state_dir) if state_dir else None
        self.offset = 0
        self.sha = hasher if hasher is not None else hashlib.sha256()
        self.members = 0
        self._mode = HEADER
        self._buf = bytearray()  # a header block or an extended-header body being collected
        self._ext: dict = {}  # pending long name / link / pax values for the next member
        self._ext_type = None
        self._ext_size = 0
        self._cur: Optional[dict] = None  # the regular file being written
        self._fd: Optional[int] = None
        self._kicked = 0  # bytes of the current file handed to the disk (start_writeback)
        self._pad_need = 0
        self._head_len = 0  # header bytes of the current member (incl. extended headers)
        self._records: list = []  # completed members: [rel, head_len, size, pad_len]
        self._seen: set = set()
        self._zeros_at: Optional[int] = None
        self._skel_fd: Optional[int] = None
        self._skel_len = 0
        if self.state_dir:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._skel_fd = os.open(self.state_dir / "skeleton.bin",
                                    os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)

    # ---------------------------------------------------------------- feeding
    def feed(self, data) -> None:
        mv = memoryview(data).cast("B")
        self.sha.update(mv)
        n, i = len(mv), 0
        while i < n:
            mode = self._mode
            if mode == DATA:
                k = min(self._cur["size"] - self._cur["written"], n - i)
                self._write(mv[i:i + k])
                i += k
                self.offset += k
                if self._cur["written"] == self._cur["size"]:
                    self._close_file()
                    self._pad_need = _pad(self._member_size)
                    if self._pad_need:
                        self._mode = PAD
                    else:
                        self._end_member()
            elif mode == PAD:
                k = min(self._pad_need, n - i)
                self._skeleton(mv[i:i + k])
                self._pad_need -= k
                i += k
                self.offset += k
                if self._pad_need == 0:
                    self._end_member()
            elif mode in (HEADER, EXT):
                need = (BLOCK if mode == HEADER else self._ext_size + _pad(self._ext_size)) - len(self._buf)
                k = min(need, n - i)
                self._buf += mv[i:i + k]
                i += k
                self.offset += k
                if k == need:
                    block = bytes(self._buf)
                    self._buf.clear()
                    if mode == HEADER:
                        self._header(block)
                    else:
                        self._ext_body(block)
            else:  # END: only zero padding may follow the end-of-archive marker
                rest = mv[i:]
                if bytes(rest).strip(b"\0"):
                    raise BadArchiveError(f"{self.where}: data after the end-of-archive blocks "
                                          f"(at byte {self.offset})")
                i = n
                self.offset += len(rest)

    def finish(self) -> str:
        """Check the stream ended properly; return its sha256 hex digest."""
        if self._mode != END:
            if self._mode == HEADER and not self._buf and not self._ext:
                raise BadArchiveError(f"{self.where}: the tar ends at a member boundary without its "
                                      f"end-of-archive blocks (truncated after {self.members} members)")
            raise BadArchiveError(f"{self.where}: the tar stream ends inside a member (truncated)")
        if self.offset - self._zeros_at < 2 * BLOCK:
            raise BadArchiveError(f"{self.where}: the tar has only one end-of-archive block (truncated)")
        self.close()
        self.check_links()
        return self.sha.hexdigest()

    def check_links(self) -> None:
        """Every symlink under dest resolves inside it, with every link of the tree in place."""
        for root, dirs, files in os.walk(self.dest):
            for name in dirs + files:
                path = os.path.join(root, name)
                if os.path.islink(path) and not _inside(os.path.realpath(path), self.dest):
                    rel = os.path.relpath(path, self.dest)
                    raise HostileTarError(f"{self.where}: the symlink {_short(rel)!r} resolves outside "
                                          f"the extraction folder")

    def close(self) -> None:
        getattr(self.sha, "close", lambda: None)()
        for attr in ("_fd", "_skel_fd"):
            fd = getattr(self, attr)
            if fd is not None:
                os.close(fd)
                setattr(self, attr, None)

    # ---------------------------------------------------------------- headers
    def _header(self, block: bytes) -> None:
        start = self.offset - BLOCK
        if block == ZERO_BLOCK:
            if self._ext:
                raise BadArchiveError(f"{self.where}: an extended header is not followed by a member")
            self._zeros_at = start
            self._mode = END
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise BadArchiveError(f"{self.where}: bad tar header at byte {start}: {exc}") from None
        self._skeleton(block)
        self._head_len += BLOCK
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK,
                         tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE):
            if info.size > MAX_EXT_HEADER:
                raise HostileTarError(f"{self.where}: extended header of {info.size} bytes at byte {start}")
            self._ext_type, self._ext_size = info.type, info.size
            self._mode = EXT if info.size else HEADER
            return
        ext, self._ext = self._ext, {}
        self._member(info, ext.get("path", info.name), ext.get("linkpath", info.linkname),
                     ext.get("size", info.size))

    def _ext_body(self, body: bytes) -> None:
        self._skeleton(body)
        self._head_len += len(body)
        data = body[:self._ext_size]
        t = self._ext_type
        self._mode = HEADER
        if t in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            value = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            self._ext["path" if t == tarfile.GNUTYPE_LONGNAME else "linkpath"] = value
            return
        records = self._pax(data)
        if t == tarfile.XGLTYPE:
            # A global header changing names or sizes of later members is not something
            # an archive tar does; other global keys (mtime, charset) are harmless.
            if {"path", "linkpath", "size"} & records.keys():
                raise HostileTarError(f"{self.where}: global pax header sets {sorted(records)}")
            return
        self._ext.update(records)

    def _pax(self, data: bytes) -> dict:
        out, pos = {}, 0
        try:
            while pos < len(data) and data[pos] != 0:
                sp = data.index(b" ", pos)
                length = int(data[pos:sp])
                rec = data[sp + 1:pos + length - 1]  # without the trailing newline
                key, _, value = rec.partition(b"=")
                key = key.decode("utf-8")
                if key in ("path", "linkpath"):
                    out[key] = value.decode("utf-8", "surrogateescape")
                elif key == "size":
                    out["size"] = int(value)
                if length <= 0:
                    raise ValueError("bad record length")
                pos += length
        except ValueError as exc:
            raise BadArchiveError(f"{self.where}: malformed pax header: {exc}") from None
        return out

    # ---------------------------------------------------------------- members
    def _refuse(self, name: str, why: str):
        raise HostileTarError(f"{self.where}: refused member {_short(name)!r}: {why}")

    def _check_length(self, shown: str, path: str, what: str) -> None:
        """ENAMETOOLONG as a refusal before anything is made (bytes, as the kernel counts)."""
        raw = os.fsencode(path)
        longest = max((len(p) for p in raw.split(b"/")), default=0)
        if longest > self.name_max:
            self._refuse(shown, f"{what} has a component of {longest} bytes: too long for the file system "
                                f"(at most {self.name_max})")
        if len(raw) >= self.path_max:
            self._refuse(shown, f"{what} is {len(raw)} bytes: too long for the file system "
                                f"(at most {self.path_max - 1})")

    def _member(self, info: tarfile.TarInfo, name: str, linkname: str, size: int) -> None:
        shown = name
        if "\0" in name:
            self._refuse(shown, "NUL in its name")
        if name.startswith("/"):
            self._refuse(shown, "absolute path")
        # One spelling per path: `a//b` and `a/./b` are `a/b` (so a duplicate cannot hide).
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            self._refuse(shown, "'..' in its path")
        name = "/".join(parts)
        self._check_length(shown, name, "its name")
        if info.ischr() or info.isblk():
            self._refuse(shown, "device file")
        if info.isfifo():
            self._refuse(shown, "FIFO")
        if not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
            self._refuse(shown, f"unsupported member type {info.type!r}")
        if info.mode & stat.S_ISUID or (info.mode & stat.S_ISGID and not info.isdir()):
            self._refuse(shown, "setuid/setgid bit")
        if size and not info.isreg():
            raise BadArchiveError(f"{self.where}: member {shown!r} of type {info.type!r} carries data")
        if size < 0:
            raise BadArchiveError(f"{self.where}: member {shown!r} has a negative size")

        try:
            rel = self.mapper(name, info.isdir())
        except ValueError as exc:
            self._refuse(shown, str(exc))
        if rel is None:
            if not info.isdir():
                self._refuse(shown, "outside the expected prefix")
            self._start(None, 0)
            return
        link_rel = None
        if info.issym():
            self._check_symlink(shown, linkname)
        if info.islnk():
            if "\0" in linkname or linkname.startswith("/") or ".." in linkname.split("/"):
                self._refuse(shown, f"hard link to {_short(linkname)!r} outside the archive")
            try:
                link_rel = self.mapper("/".join(p for p in linkname.split("/") if p not in ("", ".")), False)
            except ValueError:
                link_rel = None
            if not link_rel:
                self._refuse(shown, f"hard link to {_short(linkname)!r} outside the expected prefix")
        # tarfile's own 'data' filter as a second opinion on the mapped names.
        check = tarfile.TarInfo(rel or ".")
        check.type, check.mode = info.type, info.mode
        check.linkname = link_rel if info.islnk() else linkname
        try:
            tarfile.data_filter(check, str(self.dest))
        except tarfile.FilterError as exc:
            self._refuse(shown, str(exc))
        if not info.isdir():
            if rel in self._seen:
                self._refuse(shown, "appears twice in the archive")
            self._seen.add(rel)

        path = self.dest / rel if rel else self.dest
        self._check_length(shown, str(path), "its path in the extraction folder")
        try:
            self._create(info, path, rel, shown, linkname, link_rel, size)
        except OSError as exc:
            if exc.errno not in _MEMBER_ERRNOS:
                raise
            self._refuse(shown, f"cannot be made here: {exc.strerror}")

    def _check_symlink(self, shown: str, target: str) -> None:
        # See "Links" in the module docstring: only targets that point down are kept.
        if not target or "\0" in target:
            self._refuse(shown, "symlink with an empty target or a NUL in it")
        if target.startswith("/"):
            self._refuse(shown, f"symlink to the absolute path {_short(target)!r}")
        if ".." in target.split("/"):
            self._refuse(shown, f"symlink to {_short(target)!r} climbs with '..' (only symlinks that point "
                                "down into their own folder are kept: another link could re-aim it outside)")
        self._check_length(shown, target, "its symlink target")

    def _create(self, info, path: Path, rel, shown: str, linkname: str, link_rel, size: int) -> None:
        self._make_parents(path, shown)
        exists = os.path.lexists(path)
        if info.isdir():
            if path.is_symlink():
                self._refuse(shown, "collides with a symlink of the same name made by an earlier member")
            if exists and not path.is_dir():
                self._refuse(shown, "a folder that collides with an earlier member (a file) of the same name")
            path.mkdir(exist_ok=True)
            self._start(rel, 0)
            return
        if exists:
            self._refuse(shown, "collides with an earlier member (a folder or link) of the same name")
        if info.issym():
            os.symlink(linkname, path)
            if not _inside(os.path.realpath(path), self.dest):
                os.unlink(path)
                self._refuse(shown, f"symlink to {_short(linkname)!r} resolves outside the extraction folder")
            self._start(rel, 0)
        elif info.islnk():
            target = self.dest / link_rel
            if target.is_symlink() or not target.is_file():
                self._refuse(shown, f"hard link to {_short(linkname)!r}, which is not a file extracted before")
            if os.path.realpath(target) != str(target):
                self._refuse(shown, f"hard link to {_short(linkname)!r} goes through a symlink")
            os.link(target, path, follow_symlinks=False)
            self._start(rel, 0)
        else:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            self._cur = {"rel": rel, "size": size, "written": 0,
                         "exec": bool(info.mode & 0o100), "mtime": info.mtime}
            if size == 0:
                self._close_file()
            self._start(rel, size)

    def _make_parents(self, path: Path, shown: str) -> None:
        # Create missing parents, refusing to go through a symlink (a member could
        # have planted one to redirect later writes).
        cur = self.dest
        for part in path.relative_to(self.dest).parts[:-1]:
            cur = cur / part
            if cur.is_symlink():
                self._refuse(shown, f"would be written through the symlink {_short(part)!r}")
            if os.path.lexists(cur) and not cur.is_dir():
                self._refuse(shown, f"collides with an earlier member: {_short(part)!r} is a file, not a folder")
            cur.mkdir(exist_ok=True)

    def _start(self, rel, size: int) -> None:
        self._member_rel = rel
        self._member_size = size
        self._mode = DATA if size else HEADER
        if not size:
            self._end_member()

    def _write(self, mv: memoryview) -> None:
        cur = self._cur
        while mv:
            written = os.write(self._fd, mv)
            mv = mv[written:]
            cur["written"] += written
        if cur["written"] - self._kicked >= WRITEBACK:
            start_writeback(self._fd, self._kicked, cur["written"] - self._kicked)
            self._kicked = cur["written"]

    def _close_file(self) -> None:
        cur = self._cur
        if self._kicked:  # a big file: its tail too (small files are left to the kernel)
            start_writeback(self._fd, self._kicked, cur["written"] - self._kicked)
            self._kicked = 0
        os.close(self._fd)
        self._fd = None
        path = self.dest / cur["rel"]
        os.chmod(path, 0o755 if cur["exec"] else 0o644)
        os.utime(path, (cur["mtime"], cur["mtime"]))
        self._cur = None

    def _end_member(self) -> None:
        pad_len = _pad(self._member_size)
        self._records.append([self._member_rel, self._head_len, self._member_size, pad_len])
        self._head_len = 0
        self._mode = HEADER
        self.members += 1

    def _skeleton(self, data) -> None:
        if self._skel_fd is not None:
            mv = memoryview(data)
            while mv:
                mv = mv[os.write(self._skel_fd, mv):]
        self._skel_len += len(data)

    # ------------------------------------------------------------ checkpoints
    def at_checkpointable_point(self) -> bool:
        """True between members or inside file data: the states a checkpoint can describe."""
        between = self._mode == HEADER and not self._buf and not self._ext and not self._head_len
        return between or self._mode == DATA

    def checkpoint(self, identity: dict) -> bool:
        """Persist the resume state (see module docstring); False if not at a clean point."""
        if not self.state_dir or not self.at_checkpointable_point():
            return False
        cur = None
        if self._mode == DATA:
            cur = dict(self._cur, head_len=self._head_len)
        state = {"version": STATE_VERSION, "identity": identity, "offset": self.offset,
                 "skeleton_len": self._skel_len, "records": self._records, "current": cur}
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_dir / "state.json")
        return True

    @staticmethod
    def saved_identity(state_dir) -> Optional[dict]:
        try:
            return json.loads((Path(state_dir) / "state.json").read_text())["identity"]
        except (OSError, ValueError, KeyError):
            return None

    @classmethod
    def resume(cls, dest, mapper: Mapper, where: str, state_dir, hasher=None) -> "TarStreamExtractor":
        """Rebuild an extractor from a checkpoint, re-hashing what is on disk; ResumeError if unusable."""
        state_dir = Path(state_dir)
        try:
            state = json.loads((state_dir / "state.json").read_text())
        except (OSError, ValueError) as exc:
            raise ResumeError(f"no usable state.json: {exc}") from None
        if state.get("version") != STATE_VERSION:
            raise ResumeError("state written by another version")
        self = cls.__new__(cls)
        cls.__init__(self, dest, mapper, where, state_dir=None, hasher=hasher)  # no truncating open of the skeleton
        self.state_dir = state_dir
        try:
            self._replay(state)
        except (OSError, KeyError, TypeError, ValueError) as exc:
            self.close()
            raise ResumeError(f"partial state does not match the files on disk: {exc}") from None
        return self

    def _replay(self, state: dict) -> None:
        skel_path = self.state_dir / "skeleton.bin"
        if skel_path.stat().st_size < state["skeleton_len"]:
            raise ValueError("skeleton shorter than recorded")
        os.truncate(skel_path, state["skeleton_len"])
        keep = set()
        with open(skel_path, "rb") as skel:
            def replay_skel(n):
                data = skel.read(n)
                if len(data) != n:
                    raise ValueError("skeleton too short")
                self.sha.update(data)
                return n

            def replay_file(rel, n):
                path = self.dest / rel
                if path.is_symlink() or path.stat().st_size < n:
                    raise ValueError(f"{rel} is shorter than recorded")
                left = n
                with open(path, "rb") as f:
                    while left:
                        chunk = f.read(min(left, 1 << 22))
                        if not chunk:
                            raise ValueError(f"{rel} is shorter than recorded")
                        self.sha.update(chunk)
                        left -= len(chunk)
                return n

            offset = 0
            for rel, head_len, size, pad_len in state["records"]:
                offset += replay_skel(head_len)
                if size:
                    offset += replay_file(rel, size)
                    if (self.dest / rel).stat().st_size != size:
                        raise ValueError(f"{rel} has changed size")
                offset += replay_skel(pad_len)
                if rel is not None:
                    keep.add(rel)
                    self._seen.add(rel)
            cur = state["current"]
            if cur:
                offset += replay_skel(cur["head_len"])
                os.truncate(self.dest / cur["rel"], cur["written"])
                offset += replay_file(cur["rel"], cur["written"])
                keep.add(cur["rel"])
                self._seen.add(cur["rel"])
        if offset != state["offset"]:
            raise ValueError(f"replayed {offset} bytes, checkpoint says {state['offset']}")
        self._remove_unrecorded(keep)
        self.offset = offset
        self._records = [list(r) for r in state["records"]]
        self.members = len(self._records)
        self._skel_len = state["skeleton_len"]
        self._skel_fd = os.open(skel_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        if cur:
            self._cur = {k: cur[k] for k in ("rel", "size", "written", "exec", "mtime")}
            self._member_rel, self._member_size = cur["rel"], cur["size"]
            self._head_len = cur["head_len"]
            self._fd = os.open(self.dest / cur["rel"], os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
            self._mode = DATA

    def _remove_unrecorded(self, keep: set) -> None:
        # Members started after the checkpoint will be extracted again (O_EXCL).
        for root, dirs, files in os.walk(self.dest):
            for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
                path = os.path.join(root, name)
                if os.path.relpath(path, self.dest) not in keep:
                    os.unlink(path)
