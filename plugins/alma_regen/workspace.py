"""The working space of a MOUS after its products are published: what to keep of the member folder.

`keep` says what stays in `<workdir>/member.<MOUS>/` once the run's products are
published and verified:

    all      everything (the default: a site opts in to cleaning)
    raw      what a rerun needs without downloading anything again, that is what
             staging brought from the archive:
               raw/                     the ASDMs and their staging stamps
               script/ calibration/ qa/ log/   the auxiliary tar (scripts, PPR, calibration
                                        tables, pipeline manifest, QA2 report)
               product/                 the delivered products (fidelity's reference)
               README files             member.<MOUS>.README.txt (the CASA version)
               .<archive file>.staged.json     the stamps of the README, auxiliary and product
                                        tars (an untouched tar is not staged again)
             everything else goes: calibrated/ (the MSs), imaging/ (images, fidelity work),
             calibration.json, step notes, leftovers of interrupted steps. The folder
             is then an entry of the raw cache (a `.raw-cache.json` stamp): with the
             setting raw_cache_gb > 0 the least recently used entries are removed whole
             when the cache grows past it (`evict`, after each keep=raw cleaning, and
             `alma-regen raw-cache`).
    nothing  the whole member folder.

Rules: a symbolic link is removed, never followed (its target survives, also
below a removed folder); nothing is removed unless the caller shows the run's
manifest (the one `publish.publish` returned, or the one latest.json names)
with every output verified or reused, for this MOUS, and holding the products
now in imaging/products; nothing is removed unless the caller holds the MOUS
lock (alma_regen.mous_lock) itself. This module does not import Airflow.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import WORKSPACE_KEEP
from .errors import PermanentError
from .member import Member
from .staging.progress import human

log = logging.getLogger(__name__)

KEEP = WORKSPACE_KEEP  # all | raw | nothing
# What "raw" keeps: the folders staging fills (staging/layout.py: the ASDM, auxiliary and product tars).
RAW_KEEPS = ("raw", "script", "calibration", "qa", "log", "product")
CACHED = ".raw-cache.json"   # written by a keep=raw cleaning: the folder is a raw cache entry (below)


class NotPublished(PermanentError):
    """The run's products are not (verifiably) published: nothing may be removed."""


class NotLocked(PermanentError):
    """The caller does not hold the MOUS lock: nothing may be removed."""


def check_keep(value) -> str:
    """`value` as a keep choice, or a PermanentError of one line."""
    if value not in KEEP:
        raise PermanentError(f"keep must be one of {', '.join(KEEP)}, not {value!r}")
    return value


@dataclass
class Entry:
    name: str        # relative to the member folder (a top-level entry)
    bytes: int       # regular files below it, each inode once, links not followed
    kind: str        # dir | file | link


@dataclass
class Plan:
    member: Path
    mous: str
    keep: str
    remove: list = field(default_factory=list)   # [Entry], top-level entries
    kept: list = field(default_factory=list)     # names kept

    @property
    def whole(self) -> bool:
        return self.keep == "nothing"

    @property
    def total_bytes(self) -> int:
        return sum(e.bytes for e in self.remove)

    def as_dict(self) -> dict:
        return {"member_dir": str(self.member), "mous_uid": self.mous, "keep": self.keep,
                "remove": [{"path": e.name, "bytes": e.bytes, "kind": e.kind} for e in self.remove],
                "kept": self.kept, "whole_folder": self.whole, "bytes": self.total_bytes}


def _member(member_dir) -> tuple[Path, str]:
    given = Member.coerce(member_dir)
    member = given.root.absolute()
    if member.is_symlink():
        raise PermanentError(f"{member} is a symbolic link: give the member folder itself")
    if not member.is_dir():
        raise PermanentError(f"{member}: no such member folder")
    if not given.mous:
        raise PermanentError(f"{member} is not a member.<MOUS> folder: cannot tell which MOUS it holds")
    return member, given.mous


def _kept_for_rerun(name: str) -> bool:
    return (name in RAW_KEEPS or name.lower().endswith("readme.txt") or name == "README" or name == CACHED
            or (name.startswith(".") and name.endswith(".staged.json")))


def _size(path: Path, seen: set) -> int:
    """Bytes of the regular files at or below `path`, symbolic links not followed, hard links once."""
    def count(st) -> int:
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in seen:
            return 0
        seen.add((st.st_dev, st.st_ino))
        return st.st_size
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        return count(st)
    total = 0
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in files:  # symbolic links to folders are in dirs: not followed, not counted
            try:
                total += count(os.lstat(os.path.join(root, name)))
            except FileNotFoundError:
                pass
    return total


def plan_clean(member_dir, keep: str) -> Plan:
    """What cleaning `member_dir` with `keep` would remove (nothing is touched)."""
    keep = check_keep(keep)
    member, mous = _member(member_dir)
    plan = Plan(member=member, mous=mous, keep=keep)
    seen = set()
    for p in sorted(member.iterdir(), key=lambda x: x.name):
        if keep == "all" or (keep == "raw" and _kept_for_rerun(p.name)):
            plan.kept.append(p.name)
            continue
        kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "file"
        plan.remove.append(Entry(p.name, _size(p, seen), kind))
    return plan


def verify_published(manifest, member_dir) -> dict:
    """The manifest if it shows the member's products published and verified; NotPublished otherwise."""
    member, mous = _member(member_dir)
    if not isinstance(manifest, dict) or not str(manifest.get("schema", "")).startswith("alma-regen/manifest/"):
        raise NotPublished(f"{mous}: no manifest of a published run: nothing removed")
    where = manifest.get("location") or "the manifest"
    if manifest.get("mous_uid") != mous:
        raise NotPublished(f"{where} is of {manifest.get('mous_uid')}, not of {mous}: nothing removed")
    outputs = manifest.get("outputs") or []
    if not outputs:
        raise NotPublished(f"{where} lists no outputs: nothing removed")
    unverified = [o.get("key", "?") for o in outputs if not (o.get("verified") or o.get("reused"))]
    if unverified:
        raise NotPublished(f"{where}: {len(unverified)} output(s) not verified ({', '.join(unverified[:3])}): "
                           "nothing removed")
    # The images now in the folder must be the ones published (an image made after the
    # publish would otherwise be lost): same names, same sizes.
    published = {o.get("key"): o.get("size") for o in outputs}
    products = Member(member, mous).imaging_products
    local = sorted(products.glob("*.fits")) if products.is_dir() else []
    differ = [p.name for p in local if published.get(f"products/{p.name}") != p.lstat().st_size]
    if differ:
        raise NotPublished(f"{where} does not hold the images now in {products} ({', '.join(differ[:3])}): "
                           "publish them first; nothing removed")
    return manifest


def check_holder(member_dir, holder) -> None:
    """NotLocked unless `holder` = (dag_id, run_id) holds the MOUS lock of this member folder."""
    from .mous_lock import lock_path
    member, mous = _member(member_dir)
    path = lock_path(member.resolve().parent, mous)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = None
    if not isinstance(doc, dict) or (doc.get("dag_id"), doc.get("run_id")) != tuple(holder or ()):
        who = f"run {doc.get('run_id')} of {doc.get('dag_id')}" if isinstance(doc, dict) else "nobody"
        raise NotLocked(f"{mous}: the MOUS lock is held by {who}, not by this run: nothing removed")


def clean(plan: Plan, *, manifest, holder) -> dict:
    """Remove what `plan` lists, once the manifest shows the products published and verified
    and `holder` = (dag_id, run_id) holds the MOUS lock. Returns what was removed."""
    if plan.keep == "all":
        return {"keep": "all", "removed": [], "bytes_freed": 0}
    verify_published(manifest, plan.member)
    check_holder(plan.member, holder)
    member = plan.member
    if member.is_symlink():
        raise PermanentError(f"{member} became a symbolic link: nothing removed")
    if plan.whole:
        # rmtree removes links below it without following them (fd-based walk).
        shutil.rmtree(member)
    else:
        for e in plan.remove:
            p = member / e.name
            if p.parent != member or "/" in e.name:
                raise PermanentError(f"{p} is not directly in {member}: nothing more removed")
            if p.is_symlink() or not p.is_dir():
                p.unlink(missing_ok=True)
            else:
                shutil.rmtree(p)
    out = {"keep": plan.keep, "removed": [e.name for e in plan.remove], "bytes_freed": plan.total_bytes,
           "whole_folder": plan.whole}
    if plan.keep == "raw":
        _mark_cached(member, plan.mous, manifest)
    return out


# ------------------------------------------------------------------ the raw cache
# A member folder cleaned to keep=raw holds what a rerun needs without downloading
# anything: a cache of the archive's files. With a quota (setting raw_cache_gb) the
# least recently used of these are removed whole when the cache is over it. Only folders
# that hold nothing but what staging brought and the stamp below are cache entries: a
# folder a run is working in has more (its step note, calibrated/), and its MOUS lock is
# taken before anything is removed, so nothing in use and nothing unpublished goes.


@dataclass
class Cached:
    member: Path
    mous: str
    bytes: int
    used: float      # when a run last cleaned it after publishing (the stamp's time)


def _mark_cached(member: Path, mous: str, manifest: dict) -> None:
    from .jsonstore import write_atomic
    write_atomic(member / CACHED, {"mous_uid": mous, "run": manifest.get("run"),
                                   "location": manifest.get("location")}, what="the raw cache stamp")


def _cached(member: Path) -> Cached | None:
    """The raw cache entry `member` is now, or None (no stamp, a run works there again, gone)."""
    stamp = member / CACHED
    try:
        if member.is_symlink() or not stamp.is_file():
            return None
        if not all(_kept_for_rerun(p.name) for p in member.iterdir()):
            return None  # a run works here again (or left something): not a cache entry now
        _, mous = _member(member)
        return Cached(member, mous, _size(member, set()), stamp.stat().st_mtime)
    except (OSError, PermanentError):
        return None  # removed meanwhile, or not one of ours


def raw_cache(workdir) -> list:
    """[Cached] of the workdir, least recently used first."""
    found = (_cached(m) for m in sorted(Path(workdir).glob("member.*")))
    return sorted((c for c in found if c is not None), key=lambda c: c.used)


def evict(workdir, quota_bytes: int, *, dry_run: bool = False) -> list:
    """Remove least recently used raw cache entries until the cache fits `quota_bytes`;
    [Cached] removed (or, dry_run, that would be). An entry whose MOUS a run has taken
    meanwhile is left alone (and the next one tried)."""
    from .mous_lock import MousBusy, held
    cache = raw_cache(workdir)
    total, gone = sum(c.bytes for c in cache), []
    for c in cache:
        if total <= quota_bytes:
            break
        if dry_run:
            gone.append(c)
            total -= c.bytes
            continue
        try:
            with held(workdir, c.mous, "raw-cache"):
                if _cached(c.member) != c:  # looked at again under the lock: this folder only
                    continue
                shutil.rmtree(c.member)
        except MousBusy:
            continue
        log.info("raw cache: removed %s (%s, last used %s)", c.member, human(c.bytes),
                 time.strftime("%Y-%m-%d %H:%M", time.gmtime(c.used)))
        gone.append(c)
        total -= c.bytes
    return gone


def summary(result: dict, member) -> str:
    """One line: what cleaning removed and the bytes it freed."""
    if result.get("keep") == "all":
        return f"working space kept (keep=all): {member}"
    what = "the whole member folder" if result.get("whole_folder") else (", ".join(result["removed"]) or "nothing")
    return f"working space cleaned (keep={result['keep']}): removed {what} from {member}, " \
           f"{human(result['bytes_freed'])} freed"


# ------------------------------------------------------------------ the products' side

def published_manifest(client, to: str, mous: str) -> dict | None:
    """The manifest of the run latest.json names under `to` (`s3://bucket/prefix`), or None;
    a latest.json that names no readable run is NotPublished (nothing may be removed)."""
    from .products.manifest import BadLatest, latest_manifest
    try:
        return latest_manifest(client, to, mous)
    except BadLatest as exc:
        raise NotPublished(f"{exc}: nothing removed") from None

