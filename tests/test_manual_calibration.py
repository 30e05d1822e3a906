"""Manual calibration as scriptForPI runs it (issue 10, item 3), with real CASA.

What scriptForPI v1.34 and v2.5 do for manual data (read in real copies; DOMAIN.md):
`applyonly = True` before any script; each EB's *.ms.scriptForCalibration.py in
chronological order (then the *.ms.scriptForSDCalibration.py), in
calibrated/<EB>.calibration/ with the ASDM linked as <EB> and calibration/*.eph linked
in; <EB>.ms.split.cal moved up, then SPACESAVING in the EB's folder (>= 1: *.ms.split,
>= 2: *.ms); then scriptForPolCalibration, scriptForFluxCalibration, scriptForImagingPrep
in calibrated/; SPACESAVING >= 3 then drops every *.ms.split.cal when calibrated.ms exists;
a renormalising flux script (`ACreNorm`) limits SPACESAVING to 1.

Two kinds of delivery:
- the zoo's manual style (alma_regen_dev.zoo.manual), made from the session's synthetic
  delivery: real ASDMs, real manual-style scripts that recalibrate under applyonly; the
  result is compared with the synthetic truth;
- probe deliveries: scripts that only record what they saw (order, folder, applyonly,
  links) and make the MS folders scriptForPI moves and deletes, to test each rule cheaply
  (still run by the engine under real CASA, in the sandbox).
"""
import json
import os
from pathlib import Path

import pytest

from alma_regen import calibration, naming
from alma_regen.calibrated import Options
from alma_regen.casa.registry import load_registry
from alma_regen.casa.runner import CasaRunner
from alma_regen.delivery import Delivery, format_plan
from alma_regen.errors import CasaError

pytestmark = pytest.mark.casa


# ---------------------------------------------------------------- the zoo's manual delivery, recalibrated
# `manual_calibrated` (tests/fixtures_zoo.py): the zoo's manual delivery staged from serve-archive,
# then calibrated by the manual engine (auto, SPACESAVING 1); `manual_truth` its truth check.

def test_the_manual_engine_recovers_the_truth(manual_calibrated, manual_truth, synth_delivery):
    delivery, member, summary = manual_calibrated
    assert summary["plan"]["engine"] == "manual" and "exact version" in summary["plan"]["casa"]["reason"]
    noise = synth_delivery["truth"]["noise_jy_per_visibility_component"]
    for eb in synth_delivery["ebs"]:
        f = naming.uid_to_file(eb)
        vis = member / "calibrated" / f"{f}.ms.split.cal"
        assert vis.is_dir() and not vis.is_symlink(), "scriptForPI moves <EB>.ms.split.cal up (not a link)"
        rows = manual_truth[f]
        # The science spws (0 and 1, kept by the scripts' split) and both fields.
        assert {r["spw"] for r in rows} == {0, 1}
        assert {r["field"] for r in rows} == {"J1924-2914", "TW_Hya_synth"}
        for r in rows:
            assert abs(r["scale"] - 1) < 0.01 and abs(r["phase_deg"]) < 1.0, r
            assert r["resid_rms"] < 2 * noise, r


def test_the_scripts_ran_as_scriptforpi_runs_them(manual_calibrated, synth_delivery):
    delivery, member, summary = manual_calibrated
    cal = member / "calibrated"
    steps = summary["manual_scripts"]
    ebs = [naming.uid_to_file(e) for e in synth_delivery["ebs"]]
    # Expected: each EB's script in observing order, then the flux script, every one with
    # applyonly already True; SPACESAVING 1 at the end.
    assert [(s["kind"], s.get("eb")) for s in steps] == [("eb", f) for f in ebs] + [("flux", None), ("spacesaving", None)]
    assert all(s["applyonly"] is True for s in steps if s["kind"] != "spacesaving")
    eph = delivery["manual"]["ephemeris"]
    for f, s in zip(ebs, steps):
        here = cal / f"{f}.calibration"
        assert s["cwd"] == here.name and s["made"] == f"{f}.ms.split.cal"
        assert (here / f).resolve() == (member / "raw" / f"{f}.asdm.sdm").resolve()
        assert (here / eph).is_symlink() and (here / eph).resolve() == (member / "calibration" / eph).resolve()
        # SPACESAVING 1, in the EB's folder: *.ms.split gone, *.ms kept.
        assert not (here / f"{f}.ms.split").exists() and (here / f"{f}.ms").is_dir()
        assert s["removed"] == [f"{f}.calibration/{f}.ms.split"]
    # The flux script ran in calibrated/ after the EBs: it concatenated them.
    assert (cal / "calibrated.ms").is_dir() and steps[-2]["cwd"] == "."
    assert [r["eb"] for r in summary["ebs"]] == synth_delivery["ebs"]
    # Delivery code: run in the sandbox, as every CASA child.
    assert {r["casa_run"]["env"].get("ALMA_REGEN_SANDBOX") for r in summary["ebs"]} <= {"bwrap", "bwrap-strict"}
    assert json.loads((cal / "calibration.json").read_text())["manual_scripts"] == steps


def test_without_applyonly_the_zoo_script_needs_analysisutils(manual_calibrated, tmp_path):
    # The zoo's scripts are real-style: run on their own (as the old engine ran them, without
    # scriptForPI's applyonly = True) they call analysisUtils first, which CASA does not have.
    delivery, member, _ = manual_calibrated
    script = sorted((member / "script").glob("*.ms.scriptForCalibration.py"))[0]
    (tmp_path / script.name).write_text(script.read_text())
    with pytest.raises(CasaError, match="name 'aU' is not defined"):
        CasaRunner().run(load_registry().modular().command(tmp_path / script.name, shell=True), cwd=tmp_path)


def test_the_manual_package_as_the_archive_serves_it(manual_calibrated, synth_delivery):
    import tarfile
    delivery, _, _ = manual_calibrated
    aux = next(f["name"] for f in delivery["files"] if f["semantics"] == "#auxiliary")
    with tarfile.open(Path(delivery["archive_dir"]) / aux) as tf:
        names = [n.split("/", 4)[-1] for n in tf.getnames()]
    for eb in synth_delivery["ebs"]:
        assert f"script/{naming.uid_to_file(eb)}.ms.scriptForCalibration.py" in names
    assert "script/scriptForFluxCalibration.py" in names and f"calibration/{delivery['manual']['ephemeris']}" in names
    assert not [n for n in names if "pipescript" in n or "piperestore" in n or "PPR" in n or "manifest" in n]
    assert sum(f["semantics"] == "#progenitor" for f in delivery["files"]) == len(synth_delivery["ebs"])


def test_inspect_says_how_scriptforpi_runs_the_manual_delivery(manual_calibrated, synth_delivery):
    delivery, member, _ = manual_calibrated
    plan = Delivery(member).plan()
    assert plan["ok"], plan["problems"]
    assert plan["calibration"]["kind"] == "manual" and plan["ppr"]["path"] is None
    assert [r["eb"] for r in plan["manual"]["runs"]] == synth_delivery["ebs"]
    assert plan["manual"]["ephemerides"] == [delivery["manual"]["ephemeris"]]
    assert plan["split"]["rule"] == "manual"
    # A flux script exists: f = 1, 11 + 3 = 14 x raw/ at SPACESAVING 0.
    assert plan["disk"]["rule"]["factor"] == 14 and plan["disk"]["rule"]["scripts"] == ["scriptForFluxCalibration.py"]
    text = format_plan(plan)
    assert "order chronological" in text and delivery["manual"]["ephemeris"] in text


# ---------------------------------------------------------------- probe deliveries: each rule

# Hex parts without leading zeros: by name X47af sorts before X5c1; in observing order
# (scriptForPI v1.34/v2.5 zero-pad them) X5c1 comes first.
CHRONOLOGICAL = ["uid___A002_Xb4264b_X5c1", "uid___A002_Xb4264b_X47af", "uid___A002_Xb4264b_Xa0f3"]
SD_EB = "uid___A002_Xb4264c_X12"

PROBE = '''# probe: records what it saw, as a real manual script would find it
import json, os
if applyonly != True: es = aU.stuffForScienceDataReduction()   # NameError without applyonly = True
seen = {"script": os.path.basename(__file__), "cwd": os.getcwd(), "applyonly": applyonly,
        "mysteps": "mysteps" in globals(), "files": sorted(os.listdir("."))}
log = os.path.join(os.getcwd() if os.path.basename(os.getcwd()) == "calibrated" else "..", "probe.log")
with open(log, "a") as fh:
    fh.write(json.dumps(seen) + "\\n")
'''


def eb_probe(eb, make_split_cal=True):
    made = "".join(f"os.makedirs({n!r}, exist_ok=True)\nopen(os.path.join({n!r}, 'table.dat'), 'w').close()\n"
                   for n in (f"{eb}.ms", f"{eb}.ms.split") + ((f"{eb}.ms.split.cal",) if make_split_cal else ()))
    return PROBE + made


def probe_member(tmp_path, *, version="2.5", flux="", failing=None, no_split_cal=()):
    """A manual delivery of probe scripts: 3 interferometric EBs, 1 single-dish EB, pol, flux
    and ImagingPrep scripts, an ephemeris; raw/ holds (empty) ASDM folders."""
    casa = load_registry().modular().version
    m = tmp_path / "member.uid___A001_X1_X2"
    for d in ("script", "calibration", "raw"):
        (m / d).mkdir(parents=True)
    (m / "member.uid___A001_X1_X2.README.txt").write_text(f"CASA version used for reduction: {casa}\n")
    (m / "calibration" / "Titan.eph").write_text("$$SOE\n$$EOE\n")
    if version:
        (m / "script" / "scriptForPI.py").write_text(f"# $Id: scriptForPI.py,v {version} 2023/10/03 dpetry Exp $\n")
    for eb in CHRONOLOGICAL + [SD_EB]:
        (m / "raw" / f"{eb}.asdm.sdm").mkdir()
    for eb in CHRONOLOGICAL:
        text = eb_probe(eb, eb not in no_split_cal)
        if eb == failing:
            text += "raise RuntimeError('the reducer left a bug here')\n"
        (m / "script" / f"{eb}.ms.scriptForCalibration.py").write_text(text)
    (m / "script" / f"member.uid___A001_X1_X2.{SD_EB}.ms.scriptForSDCalibration.py").write_text(eb_probe(SD_EB))
    (m / "script" / "scriptForPolCalibration.py").write_text(PROBE)
    (m / "script" / "scriptForFluxCalibration.py").write_text(
        PROBE + f"# {flux}\nos.makedirs('calibrated.ms', exist_ok=True)\nopen('calibrated.ms/table.dat', 'w').close()\n")
    (m / "script" / "scriptForImagingPrep.py").write_text(PROBE)
    return m


def probe_log(member):
    return [json.loads(ln) for ln in (member / "calibrated" / "probe.log").read_text().splitlines()]


@pytest.mark.parametrize("spacesaving, flux, kept, removed_at_end", [
    # (SPACESAVING, flux script text, what stays in each EB's folder, split.cal dropped at the end)
    (0, "", {".ms", ".ms.split"}, False),
    (1, "", {".ms"}, False),
    (2, "", set(), False),
    (3, "", set(), True),                      # calibrated.ms exists (the flux script made it)
    (3, "es.ACreNorm(vis)", {".ms"}, False),   # renormalisation: SPACESAVING limited to 1
])
def test_the_order_applyonly_links_and_spacesaving(tmp_path, spacesaving, flux, kept, removed_at_end):
    m = probe_member(tmp_path, flux=flux)
    summary = calibration.calibrate(m, Options(engine="manual", spacesaving=spacesaving))
    seen = probe_log(m)
    cal = m / "calibrated"
    # Expected order: EBs chronologically, then the single-dish EB, then pol, flux, ImagingPrep.
    assert [s["script"] for s in seen] == [f"{eb}.ms.scriptForCalibration.py" for eb in CHRONOLOGICAL] + [
        f"member.uid___A001_X1_X2.{SD_EB}.ms.scriptForSDCalibration.py", "scriptForPolCalibration.py",
        "scriptForFluxCalibration.py", "scriptForImagingPrep.py"]
    # applyonly = True before every script, mysteps never set.
    assert all(s["applyonly"] is True and s["mysteps"] is False for s in seen)
    for eb, s in zip(CHRONOLOGICAL + [SD_EB], seen):
        assert Path(s["cwd"]).name == f"{eb}.calibration"
        assert eb in s["files"] and "Titan.eph" in s["files"]   # the ASDM and the ephemeris, linked in
        here = cal / f"{eb}.calibration"
        assert (here / eb).resolve() == (m / "raw" / f"{eb}.asdm.sdm").resolve()
        assert {suffix for suffix in (".ms", ".ms.split") if (here / f"{eb}{suffix}").exists()} == kept
        assert (cal / f"{eb}.ms.split.cal").is_dir() != removed_at_end
    for s in seen[-3:]:
        assert Path(s["cwd"]).name == "calibrated"
    final = summary["manual_scripts"][-1]
    assert final["kind"] == "spacesaving" and final["level"] == (1 if flux else spacesaving)
    assert bool(final["removed"]) == removed_at_end


def test_an_older_scriptforpi_orders_by_name(tmp_path):
    # v1.23 sorts the script names as they are; it also does not look for SD scripts.
    m = probe_member(tmp_path, version="1.23")
    calibration.calibrate(m, Options(engine="manual"))
    ebs = [s["script"] for s in probe_log(m) if s["script"].endswith("scriptForCalibration.py")]
    assert ebs == sorted(f"{eb}.ms.scriptForCalibration.py" for eb in CHRONOLOGICAL)
    assert not any("SDCalibration" in s["script"] for s in probe_log(m))


def test_a_script_that_fails_stops_the_run_with_one_clear_error(tmp_path):
    m = probe_member(tmp_path, failing=CHRONOLOGICAL[1])
    with pytest.raises(CasaError) as exc:
        calibration.calibrate(m, Options(engine="manual"))
    msg = str(exc.value)
    assert f"{CHRONOLOGICAL[1]}.ms.scriptForCalibration.py" in msg and "the reducer left a bug here" in msg
    assert "\n" not in msg
    # As scriptForPI: the run stops at the failing script (the EB before it is done).
    assert [s["script"] for s in probe_log(m)] == [f"{eb}.ms.scriptForCalibration.py" for eb in CHRONOLOGICAL[:2]]
    assert (m / "calibrated" / f"{CHRONOLOGICAL[0]}.ms.split.cal").is_dir()


def test_an_eb_without_its_split_cal_is_an_error_after_the_others_ran(tmp_path):
    m = probe_member(tmp_path, no_split_cal=(CHRONOLOGICAL[0],))
    with pytest.raises(CasaError, match=f"{CHRONOLOGICAL[0]}.ms.scriptForCalibration.py finished without making"):
        calibration.calibrate(m, Options(engine="manual"))
    # scriptForPI prints ERROR and goes on: every other script ran.
    assert len(probe_log(m)) == 7


def test_the_probe_delivery_inspects(tmp_path):
    plan = Delivery(probe_member(tmp_path)).plan()
    # (The empty probe ASDMs are errors of their own; the scripts are not.)
    assert not [p for p in plan["problems"] if "/script" in p["path"]], plan["problems"]
    assert [naming.uid_to_file(r["eb"]) for r in plan["manual"]["runs"]] == CHRONOLOGICAL + [SD_EB]
    assert plan["disk"]["rule"]["f"] == 1 and os.path.basename(plan["manual"]["ephemerides"][0]) == "Titan.eph"
