"""Calibration engines with real CASA on the synthetic delivery, proven against truth."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alma_regen import calibration, naming
from alma_regen.calibration import Options
from alma_regen.casa.registry import load_registry
from alma_regen.delivery import Delivery
from alma_regen.errors import CasaError, CasaTimeout, DeliveryError, NoSpaceError, PermanentError
from alma_regen.scriptforpi import run_script_for_pi
from fixtures_synth import truth_check

pytestmark = pytest.mark.casa


def copy_member(synth, dst: Path) -> Path:
    src = Path(synth["member_dir"])
    shutil.copytree(src, dst / src.name, symlinks=True)
    return dst / src.name


@pytest.fixture(scope="module")
def calibrated(synth_delivery, tmp_path_factory):
    member = copy_member(synth_delivery, tmp_path_factory.mktemp("cal"))
    summary = calibration.calibrate(member, Options())
    return member, summary


def test_native_restore_recovers_the_truth(calibrated, synth_delivery, tmp_path):
    member, summary = calibrated
    noise = synth_delivery["truth"]["noise_jy_per_visibility_component"]
    for eb in synth_delivery["ebs"]:
        f = naming.uid_to_file(eb)
        vis = member / "calibrated" / "working" / f"{f}.ms"
        # The pipeline calibrates the science spws only (calapply.txt lists no other),
        # as hifa_restoredata does; the channel-average window stays uncalibrated.
        science = json.loads((vis.parent / f"{f}.restore.result.json").read_text())["science_spws"]
        cal = [r for r in truth_check(vis, synth_delivery, "CORRECTED_DATA", tmp_path)["rows"] if r["spw"] in science]
        raw = truth_check(vis, synth_delivery, "DATA", tmp_path)["rows"]
        assert science and {r["spw"] for r in cal} == set(science)
        assert {r["field"] for r in cal} == {"J1924-2914", "TW_Hya_synth"}
        for r in cal:
            assert abs(r["scale"] - 1) < 0.01 and abs(r["phase_deg"]) < 1.0, r
            assert r["resid_rms"] < 2 * noise, r
        for r in raw:
            assert abs(r["scale"] - 1) > 0.2 or r["resid_rms"] > 3 * noise, r


def test_layout_and_summary(calibrated, synth_delivery):
    member, summary = calibrated
    cal = member / "calibrated"
    assert (cal / "products").resolve() == (member / "calibration").resolve()
    for eb in synth_delivery["ebs"]:
        f = naming.uid_to_file(eb)
        assert (cal / "rawdata" / f).resolve() == (member / "raw" / f"{f}.asdm.sdm").resolve()
        link = cal / f"{f}.ms.split.cal"
        assert link.is_symlink() and link.resolve().is_dir()
    on_disk = json.loads((cal / "calibration.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["plan"]["engine"] == "native"
    assert summary["plan"]["casa"]["casa"]["version"] == synth_delivery["casa_version"]
    assert summary["plan"]["split"] is True
    # Pipeline_Final flags the two edge channels of each science spw and an RFI burst
    # (a few rows); applycal on the science spws only flags nothing more.
    spws = synth_delivery["truth"]["spws"]
    edges = 2 * len(synth_delivery["truth"]["science_spws"]) / sum(w["nchan"] for w in spws)
    for rec in summary["ebs"]:
        assert edges <= rec["flag_fraction"] < edges + 0.01, (rec["flag_fraction"], edges)
        assert rec["duration_s"] > 0 and rec["max_rss_mb"] > 50
        assert set(rec["timings_s"]) == {"importasdm", "flags", "applycal", "split"}
        assert rec["casa_run"]["env"]["CASASITECONFIG"].endswith("include/casa/casasiteconfig.py")


def test_split_holds_the_science_spws_and_every_field_as_scriptforpi(calibrated):
    """scriptForPI's split (v2.5, the newest rule: the synthetic scriptForPI states no version):
    mstransform of the science spws, every field, the original spw ids when the EBs' science
    spws agree (both EBs: 0,1), every SPECTRAL_WINDOW row and the ASDM_* subtables kept."""
    member, summary = calibrated
    work = member / "calibrated" / "working"
    assert summary["plan"]["reindex"] is False and summary["plan"]["split_rule"]["rule"] == "if-different"
    for rec in summary["ebs"]:
        result = json.loads((work / f"{naming.uid_to_file(rec['eb'])}.restore.result.json").read_text())
        assert result["science_spws"] == [0, 1]
        assert sorted(map(int, result["summary"]["spws"])) == [0, 1, 2]
        assert sorted(map(int, result["split_summary"]["spws"])) == [0, 1]
        assert result["split_spw_rows"] == result["spw_rows"] == 3
        assert sorted(result["split_summary"]["fields"]) == ["J1924-2914", "TW_Hya_synth"]
        assert "ASDM_SBSUMMARY" in result["split_asdm_subtables"]
        # calapply.txt's pipeline intents went to applycal as the MS's obs_modes, cross-correlations only.
        applied = {a["field"]: a for a in result["applied"]}
        assert applied["TW_Hya_synth"]["intent"] == "OBSERVE_TARGET#ON_SOURCE"
        assert "CALIBRATE_PHASE#ON_SOURCE" in applied["J1924-2914"]["intent"].split(",")
        assert {a["antenna"] for a in result["applied"]} == {"*&*"}
        assert "DATA" in result["split_summary"]["columns"]


def test_hostile_calapply_is_refused(synth_delivery, tmp_path):
    member = copy_member(synth_delivery, tmp_path)
    f = naming.uid_to_file(synth_delivery["ebs"][0])
    apply = member / "calibration" / f"{f}.ms.calapply.txt"
    apply.write_text(apply.read_text().rstrip("\n") + "\nimport os; os.system('touch /tmp/pwned-by-calapply')\n")
    # Refused before any CASA runs (the plan reads every calapply.txt for hifa_polcal tables),
    # or by the restore that reads it again.
    with pytest.raises((DeliveryError, CasaError), match="not an applycal call"):
        calibration.calibrate(member, Options())
    assert not os.path.exists("/tmp/pwned-by-calapply")


@pytest.mark.parametrize("change,why", [
    # The old synthetic form: obs_modes in intent=. hifa_restoredata would apply nothing for it.
    (("intent='TARGET'", "intent='OBSERVE_TARGET#ON_SOURCE'"), "is an obs_mode, not a pipeline intent"),
    (("intent='TARGET'", "intent='CHECK'"), "the MS has no scan with these intents"),
    (("field='TW_Hya_synth'", "field='NGC253'"), "selects no data"),
])
def test_a_calapply_line_that_would_apply_nothing_is_an_error(synth_delivery, tmp_path, change, why):
    member = copy_member(synth_delivery, tmp_path)
    f = naming.uid_to_file(synth_delivery["ebs"][0])
    apply = member / "calibration" / f"{f}.ms.calapply.txt"
    text = apply.read_text()
    assert change[0] in text
    apply.write_text(text.replace(change[0], change[1]))
    target_line = next(n for n, line in enumerate(text.splitlines(), 1) if change[0] in line)
    with pytest.raises(CasaError, match=f"{apply.name}, line {target_line}: .*{why}"):
        calibration.calibrate(member, Options(engine="native"))


def test_missing_casa_version_lists_the_installed_ones(synth_delivery, tmp_path):
    member = copy_member(synth_delivery, tmp_path)
    with pytest.raises(CasaError, match=r"CASA 5\.4\.0-70 is not installed.*installed: 6\.7\.0-31"):
        calibration.plan(member, Options(engine="manual"), registry=_registry_recording(member, "5.4.0-70"))
    with pytest.raises(CasaError, match="with the ALMA pipeline.*installed: 6.7.0-31"):
        calibration.plan(member, Options(engine="pipeline"))


def _registry_recording(member, version):
    readme = next(member.glob("*README.txt"))
    readme.write_text(f"CASA version used for reduction: {version}\n")
    return load_registry()


def test_auto_picks_pipeline_when_the_restore_script_is_moved_away(synth_delivery, tmp_path):
    member = copy_member(synth_delivery, tmp_path)
    next((member / "script").glob("*casa_piperestorescript.py")).unlink()
    with pytest.raises(CasaError, match="ALMA pipeline"):
        calibration.plan(member, Options(engine="auto"))


def test_script_for_pi_launch_contract(synth_delivery, tmp_path):
    """Modular CASA has no --pipeline tasks, so this checks the launch contract:
    scriptForPI runs in script/ under `python -m casashell`, sees the globals set
    before it, finds the restore script set aside when the full calibration is
    forced (and it comes back), and an earlier calibrated/ is moved aside."""
    member = copy_member(synth_delivery, tmp_path)
    (member / "calibrated").mkdir()
    (member / "calibrated" / "only-copy.txt").write_text("precious")
    restore = next((member / "script").glob("*casa_piperestorescript.py"))
    with pytest.raises(CasaError, match="no ALMA pipeline"):
        run_script_for_pi(member, load_registry().modular(), Options(spacesaving=2, dosplit=True),
                          force_full=True)
    seen = json.loads((member / "calibrated" / "scriptForPI.globals.json").read_text())
    assert seen == {"SPACESAVING": 2, "DOSPLIT": True, "DOCONTSUB": False, "mode": "pipeline"}
    assert restore.is_file(), "the restore script must be put back"
    aside = list(member.glob("calibrated.previous-*"))
    assert len(aside) == 1 and (aside[0] / "only-copy.txt").read_text() == "precious"
    # Without forcing, scriptForPI sees the restore script.
    with pytest.raises(CasaError):
        run_script_for_pi(member, load_registry().modular(), Options())
    assert json.loads((member / "calibrated" / "scriptForPI.globals.json").read_text())["mode"] == "restore"


def test_manual_calibration_layout(synth_delivery, tmp_path):
    member = copy_member(synth_delivery, tmp_path)
    script = member / "script"
    for p in list(script.glob("*casa_pipe*script.py")) + list(script.glob("PPR_*.xml")):
        p.unlink()
    for eb in synth_delivery["ebs"]:
        f = naming.uid_to_file(eb)
        (script / f"{f}.ms.scriptForCalibration.py").write_text(
            f"# manual calibration of {f} (minimal)\n"
            f"importasdm(asdm='{f}', vis='{f}.ms', ocorr_mode='ca')\n"
            f"split(vis='{f}.ms', outputvis='{f}.ms.split.cal', datacolumn='data', intent='*OBSERVE_TARGET*')\n")
    summary = calibration.calibrate(member, Options())
    assert summary["plan"]["engine"] == "manual"
    assert "exact version" in summary["plan"]["casa"]["reason"]
    for eb in synth_delivery["ebs"]:
        f = naming.uid_to_file(eb)
        assert (member / "calibrated" / f"{f}.ms.split.cal").resolve().is_dir()


def test_disk_preflight_fails_before_casa(synth_delivery, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("this sandbox does not allow mounting a tmpfs")
    try:
        member = copy_member(synth_delivery, mnt)
        with pytest.raises(NoSpaceError, match=r"GB free.*SPACESAVING=1"):
            calibration.calibrate(member, Options())
        assert not (member / "calibrated").exists(), "nothing may start when the disk is short"
        calibration.preflight_disk(member, -1)  # SPACESAVING=-1 skips the check
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_rerun_after_a_killed_worker_starts_clean(synth_delivery, tmp_path):
    member = copy_member(synth_delivery, tmp_path)
    code = ("import sys; from alma_regen import calibration; "
            "calibration.calibrate(sys.argv[1], calibration.Options())")
    proc = subprocess.Popen([sys.executable, "-c", code, str(member)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = member / "calibrated" / "working" / f"{naming.uid_to_file(synth_delivery['ebs'][0])}.ms"
    deadline = time.monotonic() + 120
    while not first.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the worker and its CASA child die mid-restore
    proc.wait()
    assert first.exists(), "the kill came before the restore started"
    assert not (member / "calibrated" / "calibration.json").exists()
    summary = calibration.calibrate(member, Options())
    assert len(summary["ebs"]) == 2
    science = synth_delivery["truth"]["science_spws"]
    rows = [r for r in truth_check(first, synth_delivery, "CORRECTED_DATA", tmp_path)["rows"] if r["spw"] in science]
    assert rows and all(abs(r["scale"] - 1) < 0.01 for r in rows)


def test_timeout_kills_the_restore(synth_delivery, tmp_path):
    member = copy_member(synth_delivery, tmp_path)
    with pytest.raises(CasaTimeout):
        calibration.calibrate(member, Options(timeout_s=0.5))


def test_spacesaving_levels(tmp_path):
    for name in ("a.ms", "a.ms.split", "a.ms.split.cal", "b.ms", "a.ms.flagversions"):
        (tmp_path / name).mkdir()
    assert calibration.apply_spacesaving(tmp_path, 0) == []
    assert calibration.apply_spacesaving(tmp_path, 1) == ["a.ms.split"]
    # b.ms has no split.cal: it is the only calibrated copy and stays.
    assert calibration.apply_spacesaving(tmp_path, 2) == ["a.ms"]
    assert not (tmp_path / "a.ms.flagversions").exists() and (tmp_path / "b.ms").exists()
    assert calibration.apply_spacesaving(tmp_path, 3) == ["a.ms.split.cal"]


def test_bad_params_are_refused():
    with pytest.raises(PermanentError, match="engine"):
        Options(engine="magic")
    with pytest.raises(PermanentError, match="SPACESAVING"):
        Options(spacesaving="lots")


# ---------------------------------------------------------------- sessions and the manifest (no CASA)

MOUS_F = "uid___A001_X87c_X69"
EBS_F = ["uid___A002_Xa1_X1", "uid___A002_Xa1_X2", "uid___A002_Xb2_X3"]
RESTORE = """from recipes.almahelpers import fixsyscaltimes # SACM/JAO - Fixes
__rethrow_casa_exceptions = True
import os; os.system('touch {pwned}')
h_init()
try:
    hifa_restoredata (vis={vis}, session={sessions}, ocorr_mode='ca')
finally:
    h_save()
"""
MANIFEST = """<?xml version="1.0" encoding="UTF-8"?>
<piperesults name="{mous}"><ous name="{mous}">
  <casaversion name="6.6.1-17"/><pipeline_version name="2024.1.0.8"/>
  <session name="session_1">
    <caltables name="{mous}.session_1.caltables.tgz" session="session_1" datatype="caltables" format="tgz"/>
    <asdm name="{e0}.ms" datatype="asdm" format="sdm"><finalflags name="{e0}.ms.flagversions.tgz"/><applycmds name="{e0}.ms.calapply.txt"/></asdm>
    <asdm name="{e1}.ms" datatype="asdm" format="sdm"><finalflags name="{e1}.ms.flagversions.tgz"/><applycmds name="{e1}.ms.calapply.txt"/></asdm>
  </session>
  <session name="session_3">
    <caltables name="{mous}.session_3.caltables.tgz" session="session_3" datatype="caltables" format="tgz"/>
    <asdm name="{e2}.ms" datatype="asdm" format="sdm"><finalflags name="{e2}.ms.flagversions.tgz"/><applycmds name="{e2}.ms.calapply.txt"/></asdm>
  </session>
</ous></piperesults>
"""


def hand_made_member(tmp_path, sessions=("session_1", "session_1", "session_3"), manifest=True):
    """A member folder with the files a 3-EB, 2-session restore reads (contents are not read here)."""
    member = tmp_path / f"member.{MOUS_F}"
    for d in ("script", "calibration", "raw"):
        (member / d).mkdir(parents=True)
    (member / f"member.{MOUS_F}.README.txt").write_text("Install the latest CASA.\n")
    (member / "script" / f"member.{MOUS_F}.hifa_calimage.casa_piperestorescript.py").write_text(
        RESTORE.format(vis=list(EBS_F), sessions=list(sessions), pwned=tmp_path / "PWNED"))
    for eb in EBS_F:
        (member / "raw" / f"{eb}.asdm.sdm").mkdir()
        for suffix in (".ms.flagversions.tgz", ".ms.calapply.txt"):
            (member / "calibration" / f"{eb}{suffix}").write_text("")
    for s in set(sessions):
        (member / "calibration" / f"{MOUS_F}.{s}.caltables.tgz").write_text("")
    if manifest:
        (member / "calibration" / f"{MOUS_F}.hifa_calimage.pipeline_manifest.xml").write_text(
            MANIFEST.format(mous=MOUS_F, e0=EBS_F[0], e1=EBS_F[1], e2=EBS_F[2]))
    return member


def _session_of_jobs(member):
    jobs = [calibration.restore_job(member, naming.file_to_uid(eb), split=False) for eb in EBS_F]
    return [(j["session"], Path(j["caltables"]).name) for j in jobs]


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "restore-script"])
def test_per_session_caltables_with_or_without_a_manifest(tmp_path, manifest):
    member = hand_made_member(tmp_path, manifest=manifest)
    assert _session_of_jobs(member) == [("session_1", f"{MOUS_F}.session_1.caltables.tgz")] * 2 + [
        ("session_3", f"{MOUS_F}.session_3.caltables.tgz")]
    job = calibration.restore_job(member, naming.file_to_uid(EBS_F[2]), split=True)
    assert Path(job["calapply"]).name == f"{EBS_F[2]}.ms.calapply.txt"
    assert Path(job["flagversions"]).name == f"{EBS_F[2]}.ms.flagversions.tgz"
    assert not (tmp_path / "PWNED").exists(), "the restore script is read as data, never run"


def test_restore_script_sessions_follow_hifa_restoredata(tmp_path):
    # A session list shorter than vis: the rest go to the last session, as hifa_restoredata assigns them.
    member = hand_made_member(tmp_path, sessions=("session_2", "session_5"), manifest=False)
    assert calibration.restore_script_sessions(member) == {
        EBS_F[0]: "session_2", EBS_F[1]: "session_5", EBS_F[2]: "session_5"}
    assert _session_of_jobs(member)[2] == ("session_5", f"{MOUS_F}.session_5.caltables.tgz")
    (member / "calibration" / f"{MOUS_F}.session_5.caltables.tgz").unlink()
    with pytest.raises(DeliveryError, match=r"caltables of session_5 is missing"):
        calibration.restore_job(member, naming.file_to_uid(EBS_F[1]), split=False)


def test_restore_script_that_is_not_data_is_refused(tmp_path):
    member = hand_made_member(tmp_path, manifest=False)
    script = next((member / "script").glob("*piperestorescript.py"))
    script.write_text("vis = ['x']\nhifa_restoredata(vis=vis, session=['session_1'])\n")
    with pytest.raises(DeliveryError, match="vis= is not a literal"):
        calibration.restore_script_sessions(member)
    script.write_text("h_init()\n")
    with pytest.raises(DeliveryError, match="0 hifa_restoredata calls"):
        calibration.restore_script_sessions(member)


def test_manifest_preference_versions_and_unknown_ebs(tmp_path):
    member = hand_made_member(tmp_path)
    # The README has no version line (modern deliveries): the manifest's versions plan the run.
    cv = Delivery(member).casa_version()
    assert (cv["version"], cv["pipeline_version"]) == ("6.6.1-17", "2024.1.0.8")
    assert cv["source"].endswith("hifa_calimage.pipeline_manifest.xml")
    # Several manifests: the *cal* one wins, as in hifa_restoredata.
    (member / "calibration" / f"{MOUS_F}.hif_image.manifest-copy.pipeline_manifest.xml").write_text("<piperesults/>")
    assert calibration.pipeline_manifest(member)["casa_version"] == "6.6.1-17"
    (member / "calibration" / f"{MOUS_F}.hifa_cal.pipeline_manifest.xml").write_text("<piperesults/>")
    with pytest.raises(DeliveryError, match="2 pipeline manifests"):
        calibration.pipeline_manifest(member)
    member2 = hand_made_member(tmp_path / "b")
    with pytest.raises(DeliveryError, match="does not list uid___A002_Xff_X9"):
        calibration.restore_job(member2, "uid://A002/Xff/X9", split=False)
    manifest = next((member2 / "calibration").glob("*pipeline_manifest.xml"))
    manifest.write_text(manifest.read_text().replace(f'name="{EBS_F[0]}.ms.calapply.txt"', 'name="../../etc/passwd"'))
    with pytest.raises(DeliveryError, match="no usable apply file"):
        calibration.restore_job(member2, naming.file_to_uid(EBS_F[0]), split=False)


def test_the_plan_is_made_once_per_run_and_read_by_the_later_steps(synth_delivery, tmp_path):
    """prepare saves the run's plan; the mapped restores and the finish read it. A README
    edited in the middle of the run (here: a CASA that is not installed) changes nothing
    for this run; another run's plan, other options or a CASA gone are refused."""
    import json
    member = copy_member(synth_delivery, tmp_path)
    opts = Options(engine="native")
    made = calibration.prepare(member, opts, "run-1")
    readme = next(member.glob("*README.txt"))
    readme.write_text("CASA version used for reduction: 5.4.0-70\n")
    with pytest.raises(CasaError):  # planning again would now decide otherwise
        calibration.plan(member, Options(engine="manual"))
    again = calibration.load_plan(member, opts, "run-1")
    assert again.as_dict() == made.as_dict() and again.resolution.launcher == made.resolution.launcher
    # The timeout is not part of the plan (each task has its own limit).
    assert calibration.load_plan(member, Options(engine="native", timeout_s=5), "run-1").as_dict() == made.as_dict()
    with pytest.raises(PermanentError, match="is the plan of run run-1 .* not of run run-2"):
        calibration.load_plan(member, opts, "run-2")
    with pytest.raises(PermanentError, match="not of run run-1 with"):
        calibration.load_plan(member, Options(engine="native", dosplit=True), "run-1")
    path = member / calibration.PLAN_FILE
    doc = json.loads(path.read_text())
    doc["plan"]["casa"]["casa"]["executable"] = "/opt/gone/bin/python3"
    path.write_text(json.dumps(doc))
    with pytest.raises(CasaError, match="not installed on this worker"):
        calibration.load_plan(member, opts, "run-1")
    path.unlink()
    with pytest.raises(PermanentError, match="no calibration plan: run prepare_calibration"):
        calibration.load_plan(member, opts, "run-1")
