"""The streaming untar on its own: correctness, end-of-archive checks, resume, and hostile tars."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import archive_builder as ab
import pytest

from alma_regen import naming
from alma_regen.staging.errors import BadArchiveError, HostileTarError
from alma_regen.staging.layout import ASDM, AUXILIARY, MemberLayout, member_path
from alma_regen.staging.tarstream import ResumeError, TarStreamExtractor

EB = ab.EBS[0]
ASDM_DIR = naming.asdm_dir(EB)
PFX = ab.prefix()


def layout():
    return MemberLayout(ASDM, ab.PROJECT, ab.MOUS, EB)


def feed_all(ex, data: bytes, chunk: int = 65536):
    for i in range(0, len(data), chunk):
        ex.feed(data[i:i + chunk])


def test_member_path():
    assert member_path("/w", "uid://A001/X1a2b/X3c") == Path("/w/member.uid___A001_X1a2b_X3c")


@pytest.mark.parametrize("chunk", [1, 511, 512, 4096, 1 << 20])
@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_any_chunking_and_format_gives_the_tar_content_and_its_sha256(tmp_path, chunk, fmt):
    members = {f"raw/{ASDM_DIR}/{k}": v for k, v in ab.asdm_files(EB, n_binaries=2, binary_size=3001).items()}
    members[f"raw/{ASDM_DIR}/ASDMBinary/" + "x" * 120] = b"a long name"  # GNU long name / pax path
    if fmt == tarfile.USTAR_FORMAT:
        members.pop(f"raw/{ASDM_DIR}/ASDMBinary/" + "x" * 120)
    tar = ab.write_tar(tmp_path / "a.tar", members, PFX, fmt=fmt)
    data = tar.read_bytes()
    ex = TarStreamExtractor(tmp_path / "out", layout(), "a.tar")
    feed_all(ex, data, chunk)
    assert ex.finish() == hashlib.sha256(data).hexdigest()
    assert ab.tree_bytes(tmp_path / "out") == ab.tar_contents(tar, f"{PFX}/raw/{ASDM_DIR}/")


def test_auxiliary_layout_keeps_the_member_subfolders(tmp_path):
    tar = ab.write_tar(tmp_path / "aux.tar", ab.aux_members(), PFX)
    ex = TarStreamExtractor(tmp_path / "out", MemberLayout(AUXILIARY, ab.PROJECT, ab.MOUS), "aux.tar")
    feed_all(ex, tar.read_bytes())
    ex.finish()
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"script", "calibration", "qa", "log"}


def _tar_member_offsets(path):
    with tarfile.open(path) as tf:
        return [m.offset for m in tf.getmembers()]


def test_truncated_at_a_member_boundary_is_refused(tmp_path):
    tar = ab.asdm_tar(tmp_path / "a.tar", EB)
    data = tar.read_bytes()
    cut = _tar_member_offsets(tar)[-1]  # the header of the last member: a clean boundary
    # tarfile itself accepts this silently (the reason for the check):
    with tarfile.open(fileobj=io.BytesIO(data[:cut])) as tf:
        assert len(tf.getmembers()) > 3
    ex = TarStreamExtractor(tmp_path / "out", layout(), "a.tar")
    ex.feed(data[:cut])
    with pytest.raises(BadArchiveError, match="member boundary without its end-of-archive"):
        ex.finish()


def test_a_single_end_block_and_trailing_garbage_are_refused(tmp_path):
    data = ab.asdm_tar(tmp_path / "a.tar", EB).read_bytes().rstrip(b"\0")
    end = len(data) + (-len(data) % 512)
    ex = TarStreamExtractor(tmp_path / "o1", layout(), "a.tar")
    ex.feed(data.ljust(end, b"\0") + bytes(512))
    with pytest.raises(BadArchiveError, match="only one end-of-archive block"):
        ex.finish()
    ex = TarStreamExtractor(tmp_path / "o2", layout(), "a.tar")
    with pytest.raises(BadArchiveError, match="after the end-of-archive"):
        ex.feed(data.ljust(end, b"\0") + bytes(1024) + b"junk")


def test_checkpoint_then_resume_in_a_new_object_rehashes_from_disk(tmp_path):
    tar = ab.asdm_tar(tmp_path / "a.tar", EB, n_binaries=4, binary_size=200_000)
    data = tar.read_bytes()
    ex = TarStreamExtractor(tmp_path / "out", layout(), "a.tar", tmp_path / "state")
    cut = len(data) // 2 + 1234  # inside a binary file
    feed_all(ex, data[:cut], 10_000)
    assert ex.checkpoint({"name": "a.tar"})
    ex.feed(data[cut:cut + 50_000])  # written after the checkpoint: must be discarded
    ex.close()
    ex2 = TarStreamExtractor.resume(tmp_path / "out", layout(), "a.tar", tmp_path / "state")
    assert ex2.offset == cut
    feed_all(ex2, data[cut:])
    assert ex2.finish() == hashlib.sha256(data).hexdigest()
    assert ab.tree_bytes(tmp_path / "out") == ab.tar_contents(tar, f"{PFX}/raw/{ASDM_DIR}/")


def test_resume_refuses_a_tree_that_changed_on_disk(tmp_path):
    tar = ab.asdm_tar(tmp_path / "a.tar", EB, n_binaries=4, binary_size=200_000)
    data = tar.read_bytes()
    ex = TarStreamExtractor(tmp_path / "out", layout(), "a.tar", tmp_path / "state")
    feed_all(ex, data[:len(data) - 100_000], 10_000)
    assert ex.checkpoint({})
    ex.close()
    (tmp_path / "out" / "ASDM.xml").write_bytes(b"x")  # shorter than recorded
    with pytest.raises(ResumeError):
        TarStreamExtractor.resume(tmp_path / "out", layout(), "a.tar", tmp_path / "state")


# ------------------------------------------------------------------ hostile tars
def _hostile(tmp_path, *infos):
    """A valid ASDM tar with extra members (TarInfo, bytes|None) appended before the end blocks."""
    path = tmp_path / "hostile.tar"
    files = ab.asdm_files(EB, n_binaries=1, binary_size=1000)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for rel, data in files.items():
            ti = tarfile.TarInfo(f"{PFX}/raw/{ASDM_DIR}/{rel}")
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
        for ti, data in infos:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


def _info(name, type_=tarfile.REGTYPE, size=0, mode=0o644, linkname=""):
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.mode, ti.linkname = type_, size, mode, linkname
    return ti


def _assert_refused(tmp_path, tar, match):
    work = tmp_path / "work"
    dest = work / "member" / "raw" / "tmp"
    before = {p for p in tmp_path.rglob("*")}
    ex = TarStreamExtractor(dest, layout(), tar.name)
    with pytest.raises(HostileTarError, match=match):
        feed_all(ex, tar.read_bytes(), 4096)
        ex.finish()
    ex.close()
    # Nothing was written outside the extraction folder.
    after = {p for p in tmp_path.rglob("*")}
    outside = [p for p in after - before if dest not in p.parents and p != dest and p not in dest.parents]
    assert outside == []
    assert not (tmp_path / "evil").exists() and not Path("/tmp/alma-regen-evil").exists()


IN = f"{PFX}/raw/{ASDM_DIR}"


def test_hostile_absolute_path(tmp_path):
    _assert_refused(tmp_path, _hostile(tmp_path, (_info("/tmp/alma-regen-evil", size=4), b"evil")),
                    "absolute path")


def test_hostile_dotdot(tmp_path):
    _assert_refused(tmp_path, _hostile(tmp_path, (_info(f"{IN}/../../../../evil", size=4), b"evil")), r"'\.\.'")


def test_hostile_dotdot_in_a_gnu_long_name(tmp_path):
    name = f"{IN}/" + "d" * 100 + "/../../../../../../evil"
    _assert_refused(tmp_path, _hostile(tmp_path, (_info(name, size=4), b"evil")), r"'\.\.'")


def test_hostile_absolute_path_in_a_pax_header(tmp_path):
    path = tmp_path / "pax.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        ti = _info(f"{IN}/ok", size=4)
        ti.pax_headers = {"path": "/tmp/alma-regen-evil"}
        tar.addfile(ti, io.BytesIO(b"evil"))
    _assert_refused(tmp_path, path, "absolute path")


def test_hostile_symlink_outside(tmp_path):
    _assert_refused(tmp_path, _hostile(tmp_path, (_info(f"{IN}/link", tarfile.SYMTYPE, linkname="../../../../evil"),
                                                  None)), "outside")


def test_hostile_absolute_symlink(tmp_path):
    _assert_refused(tmp_path, _hostile(tmp_path, (_info(f"{IN}/link", tarfile.SYMTYPE, linkname="/etc"), None)),
                    "absolute|outside")


def test_hostile_write_through_an_inside_symlink(tmp_path):
    tar = _hostile(tmp_path, (_info(f"{IN}/link", tarfile.SYMTYPE, linkname="ASDMBinary"), None),
                   (_info(f"{IN}/link/x", size=4), b"evil"))
    _assert_refused(tmp_path, tar, "through the symlink")


def test_hostile_hardlink_outside(tmp_path):
    _assert_refused(tmp_path, _hostile(tmp_path, (_info(f"{IN}/hl", tarfile.LNKTYPE, linkname="/etc/passwd"),
                                                  None)), "hard link")


def test_hostile_hardlink_dotdot(tmp_path):
    _assert_refused(tmp_path, _hostile(tmp_path, (_info(f"{IN}/hl", tarfile.LNKTYPE,
                                                        linkname=f"{IN}/../../../../../evil"), None)), "hard link")


def test_hostile_character_device(tmp_path):
    _assert_refused(tmp_path, _hostile(tmp_path, (_info(f"{IN}/dev", tarfile.CHRTYPE), None)), "device")


def test_hostile_block_device(tmp_path):
    _assert_refused(tmp_path, _hostile(tmp_path, (_info(f"{IN}/dev", tarfile.BLKTYPE), None)), "device")


def test_hostile_fifo(tmp_path):
    _assert_refused(tmp_path, _hostile(tmp_path, (_info(f"{IN}/fifo", tarfile.FIFOTYPE), None)), "FIFO")


def test_hostile_setuid(tmp_path):
    _assert_refused(tmp_path, _hostile(tmp_path, (_info(f"{IN}/suid", size=4, mode=0o4755), b"evil")), "setuid")


def test_hostile_other_mous(tmp_path):
    other = ab.prefix(mous="uid://A001/X999/X1")
    _assert_refused(tmp_path, _hostile(tmp_path, (_info(f"{other}/raw/{ASDM_DIR}/x", size=4), b"evil")),
                    "member.uid___A001_X999_X1")


def test_hostile_name_not_under_the_prefix(tmp_path):
    _assert_refused(tmp_path, _hostile(tmp_path, (_info("evil.txt", size=4), b"evil")), "not under")


def test_hostile_other_eb_in_an_asdm_tar(tmp_path):
    _assert_refused(tmp_path, _hostile(tmp_path, (_info(f"{PFX}/raw/uid___A002_X1_X2.asdm.sdm/x", size=4), b"evil")),
                    "outside raw/")


def test_hostile_duplicate_member(tmp_path):
    _assert_refused(tmp_path, _hostile(tmp_path, (_info(f"{IN}/ASDM.xml", size=4), b"evil")), "twice")


def test_write_back_requests_leave_no_descriptor_behind(tmp_path):
    # start_writeback hands a dup of the fd to its thread (the file may be closed first); a full
    # queue drops the request. Either way every dup is closed again, and the data is intact.
    import time

    from alma_regen.staging.tarstream import start_writeback
    path = tmp_path / "big.bin"
    data = os.urandom(1 << 20)
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    for i in range(300):  # more than the queue holds
        os.write(fd, data[:4096])
        start_writeback(fd, i * 4096, 4096)
    os.close(fd)
    if before is not None:
        deadline = time.monotonic() + 10
        while len(os.listdir("/proc/self/fd")) > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(os.listdir("/proc/self/fd")) <= before
    assert path.read_bytes() == data[:4096] * 300
