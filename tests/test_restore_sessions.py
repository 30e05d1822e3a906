"""Sessions in the native restore, as hifa_restoredata finds and applies them (no CASA).

What the real pipeline does (read in its source, 2025.1.1.61, h/tasks/restoredata/
restoredata.py and hifa/tasks/restoredata/almarestoredata.py; the CASA tests of
test_polarisation.py run it):
- without a pipeline manifest (Cycle 4 and older), started by a restore script (its OUS
  id then 'unknown'), the caltables of a session are the first, in name order, of
  `*<session>.caltables.tgz`; the flags and apply file of an EB are named from its MS
  (`<EB>.ms.flagversions.tgz`, `<EB>.ms.calapply.txt`); EBs beyond the script's session
  list go to its last session;
- from a session's tarball it unpacks the members that start with an EB's MS name and
  those that start with the session's name: hifa_polcal's tables of the session's
  concatenated MS (`session_1_polcalib.ms.hifa_polcal...tbl`), applied to every EB of it;
- it applies every MS with parang=True once a caltable to apply was made by hifa_polcal
  ('.hifa_polcal.' in its name; the calapply lines never say parang).
Each case states the decision expected.
"""
import tarfile
from pathlib import Path

import pytest

from alma_regen import calapply, calibration, naming
from alma_regen.errors import DeliveryError
from test_security_restore import EB, EB2, caltable, confined, tgz

MOUS_F = "uid___A001_X87c_X69"
EBS_F = ["uid___A002_Xa1_X1", "uid___A002_Xa1_X2", "uid___A002_Xb2_X3"]
POLCAL = "session_1_polcalib.ms.hifa_polcal.s20_4.spw0_1.solintinf_5MHz.pcal.tbl"
WORKDIR = "/lustre/alma/pipeline/p/working"


def line(eb, tables, intent="TARGET"):
    paths = [f"{WORKDIR}/{t}" for t in tables]
    n = len(tables)
    return (f"applycal(vis='{WORKDIR}/{eb}.ms', field='T', intent='{intent}', spw='0~1', antenna='0~6', "
            f"gaintable={paths!r}, gainfield={[''] * n!r}, spwmap={[[]] * n!r}, interp={['linear'] * n!r}, "
            f"calwt={[False] * n!r})")


def member(tmp_path, sessions, calapply_tables=None, caltable_files=None):
    """member/ without a manifest: a restore script naming `sessions`, each EB's flags and
    apply file (its lines naming `calapply_tables[eb]`), the caltable tarballs named."""
    m = tmp_path / f"member.{MOUS_F}"
    for d in ("script", "calibration", "raw"):
        (m / d).mkdir(parents=True)
    (m / "script" / f"member.{MOUS_F}.hifa_calimage.casa_piperestorescript.py").write_text(
        f"h_init()\nhifa_restoredata(vis={EBS_F!r}, session={list(sessions)!r}, ocorr_mode='ca')\nh_save()\n")
    for eb in EBS_F:
        (m / "raw" / f"{eb}.asdm.sdm").mkdir()
        (m / "calibration" / f"{eb}.ms.flagversions.tgz").write_text("")
        tables = (calapply_tables or {}).get(eb, [f"{eb}.ms.hifa_bandpass.s6_3.spw0_1.bcal.tbl"])
        (m / "calibration" / f"{eb}.ms.calapply.txt").write_text(f"# Apply file for {eb}.ms\n{line(eb, tables)}\n")
    for name in caltable_files or [f"{MOUS_F}.{s}.caltables.tgz" for s in set(sessions)]:
        (m / "calibration" / name).write_text("")
    return m


# ---------------------------------------------------------------- several sessions, no manifest

def test_two_sessions_without_a_manifest_as_cycle4(tmp_path):
    # Expected: EB1, EB2 -> session_1's tarball; EB3 -> session_3's; files by the EB's MS name.
    m = member(tmp_path, ["session_1", "session_1", "session_3"])
    man = calibration.pipeline_manifest(m)
    assert man["source"] is None
    assert {eb: (e["session"], e["caltables"]) for eb, e in man["ebs"].items()} == {
        EBS_F[0]: ("session_1", f"{MOUS_F}.session_1.caltables.tgz"),
        EBS_F[1]: ("session_1", f"{MOUS_F}.session_1.caltables.tgz"),
        EBS_F[2]: ("session_3", f"{MOUS_F}.session_3.caltables.tgz")}
    assert man["ebs"][EBS_F[2]]["applycmds"] == f"{EBS_F[2]}.ms.calapply.txt"
    assert man["ebs"][EBS_F[2]]["finalflags"] == f"{EBS_F[2]}.ms.flagversions.tgz"


def test_without_a_manifest_the_tarball_is_any_name_ending_in_the_session(tmp_path):
    # hifa_restoredata globs '*' + session + '.caltables.tgz' (no dot required) and takes the
    # first in name order. Expected: 'A_session_1...' (first), not 'B.session_1...'; session_11's
    # tarball is not session_1's.
    m = member(tmp_path, ["session_1"], caltable_files=[
        "B.session_1.caltables.tgz", "A_session_1.caltables.tgz", "X.session_11.caltables.tgz"])
    man = calibration.pipeline_manifest(m)
    assert {e["caltables"] for e in man["ebs"].values()} == {"A_session_1.caltables.tgz"}


def test_a_session_name_that_is_a_path_is_refused(tmp_path):
    m = member(tmp_path, ["../x"], caltable_files=["a.caltables.tgz"])
    with pytest.raises(DeliveryError, match="names the session '../x'"):
        calibration.pipeline_manifest(m)


# ---------------------------------------------------------------- the session's own tables

def test_calapply_names_the_sessions_tables_only_with_its_session(tmp_path):
    m = member(tmp_path, ["session_1"] * 3,
               calapply_tables={EBS_F[0]: [f"{EBS_F[0]}.ms.hifa_bandpass.s6_3.spw0_1.bcal.tbl", POLCAL]})
    path = m / "calibration" / f"{EBS_F[0]}.ms.calapply.txt"
    # Expected: read from this EB's own copy, <EB>.ms.session_caltables/.
    [call] = calapply.parse_calapply(path, tmp_path / "w", EBS_F[0], "session_1")
    assert call["gaintable"][1] == str(tmp_path / "w" / f"{EBS_F[0]}.ms.session_caltables" / POLCAL)
    # Without the session, or under another one: not a caltable of this EB (refused).
    for session in (None, "session_3", "session_"):
        with pytest.raises(DeliveryError, match="is not a caltable of"):
            calapply.parse_calapply(path, tmp_path / "w", EBS_F[0], session)


def test_the_sessions_tables_unpack_into_each_ebs_own_copy(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    polcal = [(POLCAL, tarfile.DIRTYPE, None), (f"{POLCAL}/table.dat", tarfile.REGTYPE, b"d")]
    other = "session_3_polcalib.ms.hifa_polcal.s20_4.spw0_1.pcal.tbl"
    cal = tgz(tmp_path / "s1.tgz", caltable(EB) + caltable(EB2) + polcal + [(other, tarfile.DIRTYPE, None)])
    # Expected for EB in session_1: its own table at the top, the session's under its copy; EB2's
    # and another session's left in the tarball.
    assert confined.safe_extract(str(cal), str(work), EB, "caltables", "session_1") == 5
    assert sorted(p.name for p in work.iterdir()) == [f"{EB}.ms.hifa_bandpass.s6_3.spw0.bcal.tbl",
                                                      f"{EB}.ms.session_caltables"]
    assert (work / f"{EB}.ms.session_caltables" / POLCAL / "table.dat").read_bytes() == b"d"
    # EB2 of the same session gets a copy of its own: the two never replace each other's.
    confined.safe_extract(str(cal), str(work), EB2, "caltables", "session_1")
    assert (work / f"{EB2}.ms.session_caltables" / POLCAL / "table.dat").is_file()
    assert (work / f"{EB}.ms.session_caltables" / POLCAL / "table.dat").is_file()
    # Without its session the EB unpacks only its own tables, as before.
    alone = tmp_path / "alone"
    alone.mkdir()
    assert confined.safe_extract(str(cal), str(alone), EB, "caltables") == 3
    assert [p.name for p in alone.iterdir()] == [f"{EB}.ms.hifa_bandpass.s6_3.spw0.bcal.tbl"]


def test_a_member_named_as_the_session_copy_is_refused(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    cal = tgz(tmp_path / "bad.tgz", [(f"{EB}.ms.session_caltables", tarfile.DIRTYPE, None)])
    with pytest.raises(confined.ConfinementError, match="the restore writes"):
        confined.safe_extract(str(cal), str(work), EB, "caltables", "session_1")


# ---------------------------------------------------------------- parang

def test_parang_is_true_for_every_eb_once_one_applies_a_hifa_polcal_table(tmp_path):
    # Expected: EB1's lines name a hifa_polcal table -> parang=True for all three EBs
    # (hifa_restoredata decides for the whole restore), with the tables named per EB.
    m = member(tmp_path, ["session_1", "session_1", "session_3"],
               calapply_tables={EBS_F[0]: [f"{EBS_F[0]}.ms.hifa_bandpass.s6_3.spw0_1.bcal.tbl", POLCAL]})
    ebs = [naming.file_to_uid(e) for e in EBS_F]
    rule = calibration.polcal_parang(m, ebs)
    assert rule["parang"] is True and rule["polcal_tables"] == {EBS_F[0]: [POLCAL]}
    job = calibration.restore_job(m, ebs[2], split=False, parang=rule["parang"])
    assert job["parang"] is True and job["session"] == "session_3"


def test_parang_is_false_without_hifa_polcal_tables(tmp_path):
    # Expected: a table with 'polcal' in another place of its name does not count.
    m = member(tmp_path, ["session_1"] * 3,
               calapply_tables={EBS_F[0]: [f"{EBS_F[0]}.ms.hifa_polcalflag.s6_3.tbl"]})
    rule = calibration.polcal_parang(m, [naming.file_to_uid(e) for e in EBS_F])
    assert rule["parang"] is False and rule["polcal_tables"] == {}
    assert "no caltable was made by hifa_polcal" in rule["why"]


def test_a_hostile_calapply_stops_the_parang_decision(tmp_path):
    m = member(tmp_path, ["session_1"] * 3)
    (m / "calibration" / f"{EBS_F[1]}.ms.calapply.txt").write_text("import os\n")
    with pytest.raises(DeliveryError, match="not an applycal call"):
        calibration.polcal_parang(m, [naming.file_to_uid(e) for e in EBS_F])
