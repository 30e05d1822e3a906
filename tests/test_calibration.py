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
from alma_regen.errors import CasaError, CasaTimeout, NoSpaceError, PermanentError
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
        vis = member / "calibrated" / "working" / f"{naming.uid_to_file(eb)}.ms"
        cal = truth_check(vis, synth_delivery, "CORRECTED_DATA", tmp_path)["rows"]
        raw = truth_check(vis, synth_delivery, "DATA", tmp_path)["rows"]
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
    for rec in summary["ebs"]:
        assert 0.2 < rec["flag_fraction"] < 0.5
        assert rec["duration_s"] > 0 and rec["max_rss_mb"] > 50
        assert set(rec["timings_s"]) == {"importasdm", "flags", "applycal", "split"}
        assert rec["casa_run"]["env"]["CASASITECONFIG"].endswith("include/casa/casasiteconfig.py")


def test_split_holds_only_science_spws_and_the_target(calibrated):
    member, summary = calibrated
    work = member / "calibrated" / "working"
    for rec in summary["ebs"]:
        result = json.loads((work / f"{naming.uid_to_file(rec['eb'])}.restore.result.json").read_text())
        assert result["science_spws"] == [0, 1]
        assert sorted(map(int, result["summary"]["spws"])) == [0, 1, 2]
        assert sorted(map(int, result["split_summary"]["spws"])) == [0, 1]
        assert result["split_summary"]["fields"] == ["TW_Hya_synth"]
        assert "DATA" in result["split_summary"]["columns"]


def test_hostile_calapply_is_refused(synth_delivery, tmp_path):
    member = copy_member(synth_delivery, tmp_path)
    f = naming.uid_to_file(synth_delivery["ebs"][0])
    apply = member / "calibration" / f"{f}.ms.calapply.txt"
    apply.write_text(apply.read_text() + "import os; os.system('touch /tmp/pwned-by-calapply')\n")
    with pytest.raises(CasaError, match="not an applycal call"):
        calibration.calibrate(member, Options())
    assert not os.path.exists("/tmp/pwned-by-calapply")


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
    rows = truth_check(first, synth_delivery, "CORRECTED_DATA", tmp_path)["rows"]
    assert all(abs(r["scale"] - 1) < 0.01 for r in rows)


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
