"""What the native restore reads and unpacks stays in the delivery (issue 11, Why 2, 4 and 5).

- the restore tarballs (`<EB>.ms.flagversions.tgz`, the session's caltables tgz): members
  confined to their EB's names, `..`, links and devices refused, collisions and over-long
  names one clear line (include/casa_scripts/confined.py, called directly: no CASA needed);
- the files the worker hands to CASA (calapply.txt, flag versions, caltables, the manifest)
  resolve inside the member folder, checked right before the read;
- a few cases through the real restore with real CASA (kept few: CASA costs CPU).
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from alma_regen import calibration, naming
from alma_regen.calibration import Options
from alma_regen.errors import CasaError, DeliveryError
from alma_regen.paths import casa_script

EB = "uid___A002_Xb4264b_X47af"
EB2 = "uid___A002_Xb4264b_X5e01"


def _confined():
    spec = importlib.util.spec_from_file_location("alma_regen_test_confined", casa_script("confined.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


confined = _confined()


def tgz(path: Path, members) -> Path:
    """A gzip tar of (name, type, data-or-linkname) in the order given."""
    with tarfile.open(path, "w:gz") as tar:
        for name, type_, payload in members:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mtime = type_, 1_700_000_000
            ti.mode = 0o755 if type_ == tarfile.DIRTYPE else 0o644
            if type_ == tarfile.REGTYPE:
                ti.size = len(payload)
                tar.addfile(ti, io.BytesIO(payload))
            else:
                ti.linkname = payload or ""
                tar.addfile(ti)
    return path


def caltable(eb, name="hifa_bandpass.s6_3.spw0.bcal.tbl"):
    t = f"{eb}.ms.{name}"
    return [(t, tarfile.DIRTYPE, None), (f"{t}/table.dat", tarfile.REGTYPE, b"cal"),
            (f"{t}/table.info", tarfile.REGTYPE, b"Type = Calibration\n")]


def flagversions(eb):
    f = f"{eb}.ms.flagversions"
    return [(f, tarfile.DIRTYPE, None), (f"{f}/FLAG_VERSION_LIST", tarfile.REGTYPE, b"Pipeline_Final : x\n"),
            (f"{f}/flags.Pipeline_Final", tarfile.DIRTYPE, None),
            (f"{f}/flags.Pipeline_Final/table.dat", tarfile.REGTYPE, b"flags")]


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def work(tmp_path):
    w = tmp_path / "calibrated" / "working"
    w.mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    return w


def refused(tmp_path, work, path, kind, match):
    before = tree(tmp_path)
    with pytest.raises(confined.ConfinementError, match=match) as exc:
        confined.safe_extract(str(path), str(work), EB, kind)
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 800
    assert tree(tmp_path) == before  # nothing written, anywhere


# ------------------------------------------------------------------ the tarballs, directly
def test_real_shaped_tarballs_unpack_exactly_and_only_this_eb(tmp_path, work):
    cal = tgz(tmp_path / "s1.caltables.tgz", caltable(EB) + caltable(EB2) + caltable(EB, "hifa_tsyscal.tbl"))
    assert confined.safe_extract(str(cal), str(work), EB, "caltables") == 6
    assert sorted(p.name for p in work.iterdir()) == [f"{EB}.ms.hifa_bandpass.s6_3.spw0.bcal.tbl",
                                                      f"{EB}.ms.hifa_tsyscal.tbl"]
    fv = tgz(tmp_path / "fv.tgz", [(f"./{n}", t, d) for n, t, d in flagversions(EB)])  # "./" names too
    confined.safe_extract(str(fv), str(work), EB, "flagversions")
    assert (work / f"{EB}.ms.flagversions" / "flags.Pipeline_Final" / "table.dat").read_bytes() == b"flags"


def test_a_rerun_replaces_an_earlier_attempts_copies(tmp_path, work):
    cal = tgz(tmp_path / "s1.caltables.tgz", caltable(EB))
    stale = work / f"{EB}.ms.hifa_bandpass.s6_3.spw0.bcal.tbl"
    stale.mkdir()
    (stale / "left.over").write_bytes(b"old")
    confined.safe_extract(str(cal), str(work), EB, "caltables")
    assert sorted(p.name for p in stale.iterdir()) == ["table.dat", "table.info"]


HOSTILE = {
    # Why 5, as found: a flag-versions member climbing out of its folder...
    "flagversions ..": ("flagversions", flagversions(EB) + [(f"{EB}.ms.flagversions/../X", tarfile.REGTYPE, b"x")],
                        r"'\.\.'"),
    # ...caltables members writing into the MS, or forging another EB's record.
    "caltable into the MS": ("caltables", caltable(EB) + [(f"{EB}.ms.x.tbl/../{EB}.ms/table.dat",
                                                           tarfile.REGTYPE, b"x")], r"'\.\.'"),
    "caltable forging a record": ("caltables", caltable(EB) + [(f"{EB}.ms.x.tbl/../{EB2}.calibration.json",
                                                                tarfile.REGTYPE, b"{}")], r"'\.\.'"),
    "straight into the MS": ("caltables", caltable(EB) + [(f"{EB}.ms/table.dat", tarfile.REGTYPE, b"x")],
                             "not a caltable"),
    "into the split output": ("caltables", caltable(EB) + [(f"{EB}.ms.split.cal/table.dat", tarfile.REGTYPE,
                                                            b"x")], "not a caltable"),
    "into the flag versions": ("caltables", caltable(EB) + [(f"{EB}.ms.flagversions/FLAG_VERSION_LIST",
                                                             tarfile.REGTYPE, b"x")], "not a caltable"),
    "this EB's job file": ("caltables", caltable(EB) + [(f"{EB}.restore.job.json", tarfile.REGTYPE, b"{}")],
                           "not a caltable"),
    "dot-dot first": ("caltables", caltable(EB) + [(f"../{EB}.ms.x.tbl", tarfile.REGTYPE, b"x")], r"'\.\.'"),
    "dot-slash-dot-dot": ("caltables", caltable(EB) + [(f"./../{EB}.ms.x.tbl", tarfile.REGTYPE, b"x")],
                          r"'\.\.'"),
    "absolute": ("caltables", caltable(EB) + [(f"/tmp/{EB}.ms.x.tbl", tarfile.REGTYPE, b"x")], "absolute"),
    "other EB climbing": ("caltables", caltable(EB) + [(f"{EB2}.ms.x/../../x", tarfile.REGTYPE, b"x")],
                          r"'\.\.'"),
    "outside the flag versions": ("flagversions", flagversions(EB) + [(f"{EB}.ms.x", tarfile.REGTYPE, b"x")],
                                  "outside"),
    "symlink": ("caltables", caltable(EB) + [(f"{EB}.ms.l.tbl", tarfile.SYMTYPE, "/etc")], "not a plain file"),
    "hard link": ("caltables", caltable(EB) + [(f"{EB}.ms.h.tbl", tarfile.LNKTYPE, "/etc/passwd")],
                  "not a plain file"),
    "device": ("flagversions", flagversions(EB) + [(f"{EB}.ms.flagversions/d", tarfile.CHRTYPE, None)],
               "not a plain file"),
    "fifo": ("flagversions", flagversions(EB) + [(f"{EB}.ms.flagversions/p", tarfile.FIFOTYPE, None)],
             "not a plain file"),
    "file twice": ("caltables", caltable(EB) + [(f"{EB}.ms.hifa_bandpass.s6_3.spw0.bcal.tbl/table.dat",
                                                 tarfile.REGTYPE, b"again")], "twice"),
    "file then folder": ("caltables", caltable(EB) + [(f"{EB}.ms.f.tbl", tarfile.REGTYPE, b"x"),
                                                      (f"{EB}.ms.f.tbl", tarfile.DIRTYPE, None)], "twice"),
    "file then a file in it": ("caltables", caltable(EB) + [(f"{EB}.ms.f.tbl", tarfile.REGTYPE, b"x"),
                                                            (f"{EB}.ms.f.tbl/y", tarfile.REGTYPE, b"x")],
                               "collides"),
    "component over NAME_MAX": ("caltables", caltable(EB) + [(f"{EB}.ms." + "n" * 300, tarfile.REGTYPE, b"x")],
                                "too long"),
    "path over PATH_MAX": ("caltables", caltable(EB) + [(f"{EB}.ms.t/" + "/".join(["d" * 200] * 25),
                                                         tarfile.REGTYPE, b"x")], "too long"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_restore_tarball_members_are_refused_in_one_line(tmp_path, work, case):
    kind, members, match = HOSTILE[case]
    refused(tmp_path, work, tgz(tmp_path / "outside" / f"{kind}.tgz", members), kind, match)


def test_a_tarball_that_is_not_one_is_one_line(tmp_path, work):
    bad = tmp_path / "outside" / "x.tgz"
    bad.write_bytes(b"not a tar at all")
    refused(tmp_path, work, bad, "caltables", "cannot be unpacked")


def test_inside_follows_links(tmp_path, work):
    (tmp_path / "outside" / "t.tbl").mkdir()
    os.symlink(tmp_path / "outside" / "t.tbl", work / f"{EB}.ms.t.tbl")
    with pytest.raises(confined.ConfinementError, match="outside"):
        confined.inside(str(work / f"{EB}.ms.t.tbl"), str(work))
    (work / f"{EB}.ms.u.tbl").mkdir()
    assert confined.inside(str(work / f"{EB}.ms.u.tbl"), str(work)) == str((work / f"{EB}.ms.u.tbl").resolve())


# ------------------------------------------------------------------ what the worker hands to CASA
@pytest.mark.casa  # the synthetic delivery is made with CASA
@pytest.mark.parametrize("which", ["calapply", "flagversions", "caltables"])
def test_a_delivery_file_linked_outside_is_refused_before_it_is_read(member_copy, synth_delivery, tmp_path, which):
    """Why 2, second half: `calibration/<EB>.ms.calapply.txt` a symlink to a host file made
    `restore` read it and quote its first line. Now it is refused before any read."""
    member = member_copy
    eb = synth_delivery["ebs"][0]
    f = naming.uid_to_file(eb)
    host = tmp_path / "host-secret.txt"
    host.write_text("SECRET=hunter2\n")
    job = calibration.restore_job(member, eb, split=False)
    victim = Path(job[which])
    victim.unlink()
    victim.symlink_to(host)
    with pytest.raises(DeliveryError, match="outside the member folder") as exc:
        calibration.restore_job(member, eb, split=False)
    assert "hunter2" not in str(exc.value) and "\n" not in str(exc.value)
    assert f in str(exc.value) or victim.name in str(exc.value)


@pytest.mark.casa
def test_the_job_names_real_paths_inside_the_member(member_copy, synth_delivery):
    job = calibration.restore_job(member_copy, synth_delivery["ebs"][0], split=True)
    top = str(member_copy.resolve()) + os.sep
    for key in ("calapply", "flagversions", "caltables"):
        assert job[key].startswith(top) and os.path.realpath(job[key]) == job[key]


# ------------------------------------------------------------------ the real restore (CASA)
def _session_tgz(member: Path, synth, eb) -> Path:
    mous_f = naming.uid_to_file(synth["mous_uid"])
    session = next(name for name, ebs in synth["sessions"].items() if eb in ebs)
    return member / "calibration" / f"{mous_f}.{session}.caltables.tgz"


@pytest.mark.casa
def test_restore_refuses_a_caltables_member_forging_another_ebs_record(member_copy, synth_delivery):
    member = member_copy
    eb1, eb2 = (naming.uid_to_file(e) for e in synth_delivery["ebs"][:2])
    path = _session_tgz(member, synth_delivery, synth_delivery["ebs"][0])
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    forged = json.dumps({"eb": synth_delivery["ebs"][1], "flag_fraction": 0.0}).encode()
    with tarfile.open(path, "w:gz") as tar:
        for m, data in members:
            tar.addfile(m, io.BytesIO(data) if data is not None else None)
        ti = tarfile.TarInfo(f"{eb1}.ms.hifa_x.tbl/../{eb2}.calibration.json")
        ti.size = len(forged)
        tar.addfile(ti, io.BytesIO(forged))
    with pytest.raises(CasaError, match=r"RESTORE FAILED: .*'\.\.'"):
        calibration.calibrate(member, Options(engine="native"))
    assert not (member / "calibrated" / "working" / f"{eb2}.calibration.json").exists()


@pytest.mark.casa
def test_restore_refuses_docallib_naming_a_caltable_outside(member_copy, synth_delivery, tmp_path):
    """Why 4: `docallib=True, callib=...` applied a caltable from outside the delivery."""
    member = member_copy
    f = naming.uid_to_file(synth_delivery["ebs"][0])
    apply = member / "calibration" / f"{f}.ms.calapply.txt"
    lib = tmp_path / "outside.callib"
    lib.write_text(f"caltable='{tmp_path}/{f}.ms.evil.tbl' calwt=False\n")
    lines = apply.read_text().splitlines()
    n = next(i for i, line in enumerate(lines) if line.startswith("applycal("))
    lines[n] = lines[n][:-1] + f", docallib=True, callib='{lib}')"
    apply.write_text("\n".join(lines) + "\n")
    # Refused by the plan (it reads every calapply.txt before a restore starts), or by the restore.
    with pytest.raises((DeliveryError, CasaError), match=f"{apply.name}[,:] line {n + 1}: docallib=True is refused"):
        calibration.calibrate(member, Options(engine="native"))
