"""The delivery zoo (`alma-regen synth --style ...`, devtools/alma_regen_dev/zoo/).

The framework's contract first (no CASA): every style has a module or says in one line
that it is not built yet; options of cycle10 are refused for other styles.
"""
import importlib
import subprocess
import sys

import pytest

from alma_regen.errors import PermanentError
from alma_regen_dev import zoo

ALMA_REGEN = [sys.executable, "-m", "alma_regen.cli"]


def test_styles_are_the_issue_s_list():
    assert zoo.STYLES == ("cycle10", "cycle5", "cycle4", "manual", "polarisation", "single-dish")
    assert zoo.DEFAULT_STYLE == "cycle10"
    assert zoo.module_name("single-dish") == "alma_regen_dev.zoo.single_dish"


def test_an_unknown_style_is_refused_in_one_line(tmp_path):
    with pytest.raises(PermanentError, match="unknown delivery style 'cycle99'"):
        zoo.build("cycle99", tmp_path, ebs=1, seed=1)


def test_a_style_without_its_module_says_so(tmp_path, monkeypatch):
    """A style whose module is not there yet (another engineer's) is one clear line."""
    real = importlib.import_module

    def without_manual(name, *args):
        if name == "alma_regen_dev.zoo.manual":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_manual)
    with pytest.raises(PermanentError, match=r"style 'manual' is not built yet \(no module alma_regen_dev.zoo.manual\)"):
        zoo.build("manual", tmp_path, ebs=1, seed=1)


def test_cli_refuses_cycle10_options_for_other_styles(tmp_path):
    r = subprocess.run([*ALMA_REGEN, "synth", str(tmp_path), "--style", "cycle4", "--sessions", "1,1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "--sessions apply to --style cycle10 only, not cycle4" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- the styles, with real CASA data
# Each style derives from the shared synthesized deliveries (fixtures_synth: one synthesis, many
# styles): cycle5, single-dish and manual from the 2-EB one, cycle4 from the 3-EB, 2-session one;
# polarisation is its own synthesis (fixtures_zoo). Each is staged from serve-archive and from S3
# (SeaweedFS), inspected, and restored where the engine can. manual and polarisation are staged
# from serve-archive once per session (fixtures_zoo), and that staged copy is the one their own
# modules' tests calibrate and check against the truth (and, for polarisation, against the real
# hifa_restoredata): the restore here is that one, not a second.

import tarfile  # noqa: E402
from pathlib import Path  # noqa: E402

import archive_builder as ab  # noqa: E402
from archive_builder import FAST  # noqa: E402

from alma_regen import naming  # noqa: E402
from alma_regen.member import Member  # noqa: E402
from alma_regen.staging import HttpSource, S3Source, member_path, stage_mous  # noqa: E402


@pytest.fixture(scope="module")
def cycle5(synth_delivery, tmp_path_factory):
    from alma_regen_dev.zoo import cycle5 as style
    return dict(style.derive(synth_delivery, tmp_path_factory.mktemp("zoo5")), style="cycle5")


@pytest.fixture(scope="module")
def cycle4(synth_delivery_3eb, tmp_path_factory):
    from alma_regen_dev.zoo import cycle4 as style
    return dict(style.derive(synth_delivery_3eb, tmp_path_factory.mktemp("zoo4")), style="cycle4")


@pytest.fixture(scope="module")
def single_dish(synth_delivery, tmp_path_factory):
    from alma_regen_dev.zoo import single_dish as style
    return dict(style.derive(synth_delivery, tmp_path_factory.mktemp("zoosd")), style="single-dish")


def staged_equals_delivery(result, workdir):
    """Staging brought exactly the style's member folder (every file, byte for byte)."""
    staged = ab.staged_member(member_path(workdir, result["mous_uid"]))
    assert staged == ab.tree_bytes(Path(result["member_dir"]))


def stage_s3(result, workdir, seaweedfs) -> dict:
    """The style's archive uploaded to SeaweedFS and staged from there; checked byte for byte."""
    bucket = seaweedfs.bucket("zoo")
    for f in result["files"]:
        seaweedfs.client().upload_file(str(Path(result["archive_dir"]) / f["name"]), bucket, f"m/{f['name']}")
    s3 = stage_mous(result["mous_uid"], S3Source(f"s3://{bucket}/m", seaweedfs.client(), workers=1), workdir, FAST)
    staged_equals_delivery(result, workdir)
    assert s3["ebs"] == result["ebs"] and s3["missing_ebs"] == []
    return s3


def stage_both_ways(result, tmp_path, archive_server, seaweedfs):
    served = archive_server(result["archive_dir"])
    http = stage_mous(result["mous_uid"], HttpSource(served.url), tmp_path / "http", FAST)
    staged_equals_delivery(result, tmp_path / "http")
    assert http["ebs"] == result["ebs"] and http["missing_ebs"] == []
    stage_s3(result, tmp_path / "s3", seaweedfs)
    return Member.of(tmp_path / "http", result["mous_uid"])


def staged_once_equals_delivery(staged, result):
    """A session fixture's staging from serve-archive (fixtures_zoo): what it brought, read right
    after staging (the copy is calibrated since), is the style's member folder byte for byte."""
    assert staged["bytes"] == ab.tree_bytes(Path(result["member_dir"]))
    assert staged["summary"]["ebs"] == result["ebs"] and staged["summary"]["missing_ebs"] == []


def test_cycle4_is_packed_as_cycles_0_to_4_were(cycle4):
    names = {f["name"]: f["semantics"] for f in cycle4["files"]}
    assert not any(n.endswith("_auxiliary.tar") or n.endswith("README.txt") for n in names)
    product = naming.product_tar(cycle4["project"], cycle4["mous_uid"])
    assert names[product] == "#this" and cycle4["project"].startswith("2016.1.")
    with tarfile.open(Path(cycle4["archive_dir"]) / product) as tf:
        tops = {n.split(f"member.{naming.uid_to_file(cycle4['mous_uid'])}/", 1)[1].split("/")[0]
                for n in tf.getnames() if f"member.{naming.uid_to_file(cycle4['mous_uid'])}/" in n}
    assert tops == {"README", "script", "calibration", "qa2", "log", "product"}
    member = Path(cycle4["member_dir"])
    assert not list(member.glob("calibration/*pipeline_manifest.xml"))
    restore = next(member.glob("script/*casa_piperestorescript.py")).read_text()
    assert "fixsyscaltimes" in restore and "session_3" in restore and len(cycle4["sessions"]) == 2


def test_cycle4_staged_inspected_and_restored_natively(cycle4, tmp_path, archive_server, seaweedfs):
    # Decisions: staging takes the _001_of_001.tar as the package; the plan reads the version
    # from qa2/ (4.7.2), sees a restore, no manifest; `auto` restores natively on modular CASA,
    # each EB with its own session's caltables (found from the restore script's session list).
    from alma_regen import calibration
    from alma_regen.calibrated import Options
    member = stage_both_ways(cycle4, tmp_path, archive_server, seaweedfs)
    plan = member.delivery.plan()
    assert plan["ok"], plan["problems"]
    assert plan["casa_version"]["version"] == "4.7.2" and "qa2" in plan["casa_version"]["source"]
    assert plan["calibration"]["kind"] == "restore" and plan["ppr"]["ebs"] == cycle4["ebs"]
    summary = calibration.calibrate(member, Options(), parallel=2)
    assert summary["plan"]["engine"] == "native" and summary["plan"]["ebs"] == cycle4["ebs"]
    assert summary["plan"]["casa"]["casa"]["kind"] == "modular"
    for eb, rec in zip(cycle4["ebs"], summary["ebs"]):
        assert rec["eb"] == eb and Path(rec["output"]).exists()
    # Without a manifest, each EB's session from the restore script: the last EB is session_3's,
    # and its caltables are the session_3 tarball, not session_1's.
    inputs = calibration.pipeline_manifest(member)["ebs"]
    last = naming.uid_to_file(cycle4["ebs"][-1])
    assert inputs[last]["session"] == "session_3" and inputs[last]["caltables"].endswith("session_3.caltables.tgz")
    assert {inputs[naming.uid_to_file(eb)]["session"] for eb in cycle4["ebs"][:-1]} == {"session_1"}


def test_cycle5_staged_inspected_and_restored_natively(cycle5, tmp_path, archive_server, seaweedfs):
    # Decisions: the auxiliary tar as today; the plan reads 5.1.1-5 (README, QA2 report and
    # manifest agree); no CASA 5 pipeline here, so `auto` restores natively on modular CASA and
    # says the recorded version is not installed.
    from alma_regen import calibration
    from alma_regen.calibrated import Options
    names = {f["name"] for f in cycle5["files"]}
    assert naming.auxiliary_tar(cycle5["project"], cycle5["mous_uid"]) in names
    member = stage_both_ways(cycle5, tmp_path, archive_server, seaweedfs)
    plan = member.delivery.plan()
    assert plan["ok"], plan["problems"]
    assert plan["casa_version"]["version"] == "5.1.1-5"
    # Its scriptForPI is v1.23 (the $Id line): that version's rules decide, and inspect says so.
    assert plan["scriptforpi"]["version"] == "v1.23" and plan["scriptforpi"]["rules_of"] == "v1.23"
    assert plan["split"]["decided_by"] == "scriptForPI v1.23 (the delivery's)"
    # A Python 2 scriptForPI cannot run on CASA 6: the scriptforpi engine refuses before any CASA.
    from alma_regen.casa.registry import load_registry
    from alma_regen.errors import CasaError
    from alma_regen.scriptforpi import run_script_for_pi
    with pytest.raises(CasaError, match=r"scriptForPI v1\.23, a Python 2 script"):
        run_script_for_pi(member, load_registry().modular(), Options())
    assert not member.calibrated.exists()
    summary = calibration.calibrate(member, Options(), parallel=2)
    assert summary["plan"]["engine"] == "native"
    assert "5.1.1-5" in summary["plan"]["casa"]["reason"] and "not installed" in summary["plan"]["casa"]["reason"]
    assert [r["eb"] for r in summary["ebs"]] == cycle5["ebs"]


def test_single_dish_is_a_layout_routed_to_the_pipeline(single_dish, tmp_path, archive_server, seaweedfs):
    # Decisions (layout only: the data are interferometric, nothing is restored): staging and the
    # plan take it (a restore); the native engine refuses it (hsd_ scripts, jyperk.csv); `auto`
    # routes it to scriptForPI under a pipeline CASA, or stops saying it needs one.
    from alma_regen import calibration
    from alma_regen.calibrated import Options
    from alma_regen.casa.registry import load_registry
    from alma_regen.errors import CasaError, PermanentError
    assert single_dish["layout_only"] is True
    member = stage_both_ways(single_dish, tmp_path, archive_server, seaweedfs)
    restore = next(member.script.glob("*casa_piperestorescript.py"))
    assert "hsd_restoredata" in restore.read_text() and "ocorr_mode='ao'" in restore.read_text()
    assert list(member.calibration.glob("*jyperk*.csv"))
    plan = member.delivery.plan()
    assert plan["calibration"]["kind"] == "restore", plan["problems"]
    with pytest.raises(PermanentError, match="single-dish"):
        calibration.plan(member, Options(engine="native"))
    registry = load_registry()
    if any(c.has_pipeline for c in registry.launchers):
        p = calibration.plan(member, Options(), registry)
        assert p.engine == "scriptforpi" and "single-dish" in p.reason
    else:
        with pytest.raises(CasaError, match="needs a pipeline CASA"):
            calibration.plan(member, Options(), registry)


def test_single_dish_with_the_pipeline_casa_of_the_tests(single_dish, pipeline_registry, tmp_path):
    # Decision with the real pipeline CASA of the tests: `auto` chooses scriptForPI (hsd_restoredata
    # needs the pipeline). It is not run: hsd_restoredata cannot restore interferometric ASDMs
    # relabelled as total power (a layout-only delivery has no single-dish data).
    import shutil
    from alma_regen import calibration
    from alma_regen.calibrated import Options
    member = tmp_path / Path(single_dish["member_dir"]).name
    shutil.copytree(single_dish["member_dir"], member, symlinks=True)
    p = calibration.plan(member, Options(), pipeline_registry)
    assert p.engine == "scriptforpi" and p.resolution.launcher.has_pipeline


def test_manual_staged_inspected_and_calibrated(manual_delivery, manual_staged, manual_calibrated, manual_truth,
                                                synth_delivery, tmp_path, seaweedfs):
    # Decisions: staging takes the auxiliary tar (no PPR, no pipeline files: the EBs come from the
    # per-EB scripts); the plan says manual calibration, scriptForPI's chronological EB order (the
    # stand-in scriptForPI states no version: v2.5's rules), the ephemeris linked in, the CASA
    # version of the README (manual data need the exact one); `auto` picks the manual engine under
    # that CASA, every EB's split recovers the truth.
    from alma_regen.delivery import Delivery
    staged_once_equals_delivery(manual_staged, manual_delivery)
    stage_s3(manual_delivery, tmp_path / "s3", seaweedfs)
    plan = Delivery(member_path(tmp_path / "s3", manual_delivery["mous_uid"])).plan()
    assert plan["ok"], plan["problems"]
    assert plan["calibration"]["kind"] == "manual" and plan["ppr"]["path"] is None
    assert plan["manual"]["order"]["rule"] == "chronological" and plan["scriptforpi"]["version"] is None
    assert [r["eb"] for r in plan["manual"]["runs"]] == manual_delivery["ebs"]
    assert plan["manual"]["ephemerides"] == [manual_delivery["manual"]["ephemeris"]]
    assert plan["casa_version"]["version"] == manual_delivery["casa_version"]
    assert plan["casa_version"]["source"].endswith(naming.readme_name(manual_delivery["mous_uid"]))
    _, member, summary = manual_calibrated
    assert member == manual_staged["member"], "the calibration is of the copy staged from serve-archive"
    assert summary["plan"]["engine"] == "manual" and str(summary["plan"]["casa"]["casa"]["version"]) == \
        manual_delivery["casa_version"]
    assert [r["eb"] for r in summary["ebs"]] == manual_delivery["ebs"]
    noise = synth_delivery["truth"]["noise_jy_per_visibility_component"]
    for eb in manual_delivery["ebs"]:
        rows = manual_truth[naming.uid_to_file(eb)]
        assert {r["spw"] for r in rows} == {0, 1} and {r["field"] for r in rows} == {"J1924-2914", "TW_Hya_synth"}
        for r in rows:
            assert abs(r["scale"] - 1) < 0.01 and abs(r["phase_deg"]) < 1.0 and r["resid_rms"] < 2 * noise, r


def test_polarisation_staged_inspected_and_restored_natively(pol_delivery, pol_staged, native_pol, tmp_path,
                                                             seaweedfs):
    # Decisions: the plan takes it as a pipeline restore (one session); the native plan applies
    # with parang=True for every EB, because a caltable to apply was made by hifa_polcal (as
    # hifa_restoredata decides), read from the calapply files before any CASA; `auto` restores it
    # natively (nothing only the pipeline restores right). The restore is of the copy staged from
    # serve-archive (test_polarisation compares it with the real hifa_restoredata and the truth).
    from alma_regen import calibration
    from alma_regen.calibrated import Options
    from alma_regen.casa.registry import load_registry
    staged_once_equals_delivery(pol_staged, pol_delivery)
    stage_s3(pol_delivery, tmp_path / "s3", seaweedfs)
    member = Member.of(tmp_path / "s3", pol_delivery["mous_uid"])
    plan = member.delivery.plan()
    assert plan["ok"], plan["problems"]
    assert plan["calibration"]["kind"] == "restore" and plan["ppr"]["ebs"] == pol_delivery["ebs"]
    p = calibration.plan(member, Options(), load_registry())
    assert p.engine == "native" and p.parang is True and "hifa_polcal" in p.parang_rule["why"]
    assert set(p.parang_rule["polcal_tables"]) == {naming.uid_to_file(e) for e in pol_delivery["ebs"]}
    restored, summary = native_pol
    assert restored == pol_staged["member"], "the restore is of the copy staged from serve-archive"
    assert summary["plan"]["parang"] is True and [r["eb"] for r in summary["ebs"]] == pol_delivery["ebs"]
    assert all(r["parang"] is True and Path(r["output"]).exists() for r in summary["ebs"])
