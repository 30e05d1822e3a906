"""The delivery model and `alma-regen inspect`, on the synthetic delivery and hand-made variants."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alma_regen import naming
from alma_regen.delivery import Delivery
from alma_regen.errors import DeliveryError

ALMA_REGEN = [sys.executable, "-m", "alma_regen.cli"]


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def errors(plan):
    return [p for p in plan["problems"] if p["severity"] == "error"]


def inspect_cli(member, *extra):
    return subprocess.run([*ALMA_REGEN, "inspect", str(member), *extra], capture_output=True, text=True)


def mous_f(member: Path) -> str:
    return member.name[len("member."):]


# ---------------------------------------------------------------- the synthetic delivery

def test_plan_of_the_synthetic_delivery(synth_delivery):
    member = Path(synth_delivery["member_dir"])
    before = snapshot(member)
    r = inspect_cli(member, "--json", "--spacesaving", "0")  # (inspect's default is restore's, 1)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["schema"] == "alma-regen/plan/1"
    assert plan["ok"] is True and plan["problems"] == []
    assert plan["mous_uid"] == synth_delivery["mous_uid"]
    assert plan["project"] == synth_delivery["project"]
    assert plan["casa_version"]["version"] == synth_delivery["casa_version"]
    assert plan["calibration"]["kind"] == "restore"
    assert plan["imaging"]["kind"] == "script"
    assert plan["split"]["needed"] is True
    assert plan["ppr"]["ebs"] == synth_delivery["ebs"]
    assert [e["state"] for e in plan["raw"]["ebs"]] == ["ok", "ok"]
    assert all((e["scans"], e["antennas"], e["spws"]) == (5, 8, 3) for e in plan["raw"]["ebs"])
    raw = sum(e["size_bytes"] for e in plan["raw"]["ebs"])
    # scriptForPI's check at SPACESAVING 0 (unset), no flux/pol/ImagingPrep script (f=0): 11 x raw/;
    # the range over SPACESAVING 2..0: 3 x to 11 x.
    assert plan["disk"]["needed_bytes"] == 11 * raw and plan["disk"]["rule"]["f"] == 0
    assert plan["disk"]["needed_bytes_min"] == 3 * raw and plan["disk"]["needed_bytes_max"] == 11 * raw
    assert snapshot(member) == before, "inspect must not modify the delivery"


def test_human_output(synth_delivery):
    r = inspect_cli(synth_delivery["member_dir"])
    assert r.returncode == 0
    assert "calibration   restore" in r.stdout and r.stdout.rstrip().endswith("OK")


# ---------------------------------------------------------------- variants

def test_unprefixed_script_names(member_copy):
    for p in (member_copy / "script").iterdir():
        if p.name.startswith("member."):
            short = p.name.split(".hifa_calimage.")[-1] if ".hifa_calimage." in p.name else p.name.split(".", 2)[-1]
            p.rename(p.with_name(short))
    plan = Delivery(member_copy).plan()
    assert plan["ok"], plan["problems"]
    assert plan["scripts"]["restore"] == "casa_piperestorescript.py"
    assert plan["scripts"]["scriptForPI"] == "scriptForPI.py"
    assert plan["calibration"]["kind"] == "restore"


def test_new_ppr_name(member_copy, synth_delivery):
    ppr = next((member_copy / "script").glob("PPR_*.xml"))
    ppr.rename(ppr.with_name(f"{mous_f(member_copy)}.pprequest.xml"))
    plan = Delivery(member_copy).plan()
    assert plan["ok"] and plan["ppr"]["path"].endswith(".pprequest.xml")
    assert plan["ppr"]["ebs"] == synth_delivery["ebs"]


def test_restore_script_moved_away_forces_the_pipeline(member_copy):
    next((member_copy / "script").glob("*casa_piperestorescript.py")).rename(member_copy / "restore.moved")
    plan = Delivery(member_copy).plan()
    assert plan["calibration"]["kind"] == "pipeline"
    assert "casa_pipescript" in plan["calibration"]["script"]


def test_manual_calibration_layout(member_copy, synth_delivery):
    script = member_copy / "script"
    for p in list(script.glob("*casa_pipe*script.py")) + list(script.glob("PPR_*.xml")):
        p.unlink()
    for eb in synth_delivery["ebs"]:
        (script / f"{naming.uid_to_file(eb)}.ms.scriptForCalibration.py").write_text("importasdm('x')\n")
    plan = Delivery(member_copy).plan()
    assert plan["calibration"]["kind"] == "manual"
    assert plan["ppr"]["path"] is None and plan["ppr"]["ebs"] == synth_delivery["ebs"]
    assert plan["ok"], plan["problems"]


def pipeline_imaged(member):
    """Make the copy a pipeline-imaged delivery as scriptForPI sees one: a PPR that foresees
    imaging (hif_makeimages on several lines), the synthetic product/*_sci.spw*.fits, and a
    scriptForImaging.py of comments only."""
    ppr = next((member / "script").glob("PPR_*.xml"))
    steps = "".join(f"        <ProcessingProcedure><RecipeName>hif_makeimages</RecipeName></ProcessingProcedure>\n"
                    for _ in range(3))
    ppr.write_text(ppr.read_text().replace("      </ProcessingProcedure>\n", "      </ProcessingProcedure>\n" + steps, 1))
    imaging = next((member / "script").glob("*scriptForImaging.py"))
    imaging.write_text("# The images and cubes were made by the ALMA pipeline.\n# Nothing to run.\n")
    return imaging


def test_pipeline_imaged_and_imaging_prep(member_copy):
    imaging = pipeline_imaged(member_copy)
    plan = Delivery(member_copy).plan()
    assert plan["imaging"]["kind"] == "pipeline"
    # All three of scriptForPI's conditions hold: no split.
    split = plan["split"]
    assert split["needed"] is False and split["reasons"] == [] and split["rule"] == "imaging-pipeline-used"
    assert split["imaging_pipeline"] == {"used": True, "hif_makeimages_lines": 3, "science_images": 8,
                                         "imaging_code_lines": 0}
    assert Delivery(member_copy).split_needed(dosplit=True)["reasons"] == ["DOSPLIT=True"]
    # A non-trivial ImagingPrep (the knowledge base's option 1) does not split in v1.23-v2.5:
    # only a note says so.
    prep = member_copy / "script" / f"member.{mous_f(member_copy)}.scriptForImagingPrep.py"
    prep.write_text("# force the split (the seed's option 1)\nprint('split please')\n")
    split = Delivery(member_copy).plan()["split"]
    assert split["needed"] is False and "ImagingPrep" in split["note"]
    # A blank line in scriptForImaging.py counts, as `grep -v "#" | wc -l` counts it: split.
    imaging.write_text("# The images were made by the ALMA pipeline.\n\n")
    split = Delivery(member_copy).plan()["split"]
    assert split["needed"] is True and split["imaging_pipeline"]["imaging_code_lines"] == 1


def test_version_from_the_qa2_report_in_the_old_form(member_copy):
    readme = next(member_copy.glob("*README.txt"))
    readme.write_text("A README without the version line.\n")
    (member_copy / "qa" / f"{mous_f(member_copy)}.qa2_report.html").write_text(
        "<p>CASA version: 5.4.0-70, Pipeline: 42030M (r42030M)</p>")
    cv = Delivery(member_copy).casa_version()
    assert cv["version"] == "5.4.0-70" and cv["pipeline_version"] == "42030M"


def test_semipass_asdm_is_ignored_with_a_warning(member_copy):
    raw = member_copy / "raw"
    src = next(raw.iterdir())
    extra = raw / "uid___A002_Xeeeee_X1.asdm.sdm"
    os.symlink(src, extra)
    plan = Delivery(member_copy).plan()
    assert plan["ok"]
    assert plan["raw"]["extra"] == [extra.name]
    assert any(p["severity"] == "warning" and "semipass" in p["message"] for p in plan["problems"])


# ---------------------------------------------------------------- bad input: one clear message each

def only_error(member, needle, path_end):
    before = snapshot(member)
    plan = Delivery(member).plan()
    errs = errors(plan)
    assert plan["ok"] is False
    assert any(needle in e["message"] and e["path"].endswith(path_end) for e in errs), errs
    assert snapshot(member) == before, "inspect must not modify the delivery"
    r = inspect_cli(member)
    assert r.returncode == 1 and needle in r.stdout and "Traceback" not in r.stderr
    return errs


def test_no_version_anywhere_in_a_pipeline_delivery(member_copy):
    readme = next(member_copy.glob("*README.txt"))
    readme.write_text("Nothing useful here.\n")
    (next((member_copy / "qa").iterdir())).unlink()
    # Modern deliveries carry the versions in the pipeline manifest only.
    for manifest in (member_copy / "calibration").glob("*pipeline_manifest.xml"):
        manifest.unlink()
    # Issue 10: this used to stop the plan. Pipeline-calibrated data (a restore here)
    # run with the newest pipeline CASA installed, or the native engine, and inspect
    # says so; manual data still stop (tests/test_scriptforpi_rules.py).
    plan = Delivery(member_copy).plan()
    assert plan["ok"], errors(plan)
    assert plan["casa_version"]["version"] is None
    assert "no CASA version in README" in plan["casa_version"]["decision"]
    r = inspect_cli(member_copy)
    assert r.returncode == 0 and plan["casa_version"]["decision"] in r.stdout, r.stdout


def test_versions_from_the_manifest_when_the_readme_has_none(member_copy):
    readme = next(member_copy.glob("*README.txt"))
    readme.write_text("Nothing useful here.\n")
    (next((member_copy / "qa").iterdir())).unlink()
    version = Delivery(member_copy).casa_version()
    assert version["source"].endswith("pipeline_manifest.xml")
    assert version["version"] and version["pipeline_version"]


def test_two_script_for_pi_candidates(member_copy):
    (member_copy / "script" / "scriptForPI.py").write_text("# another one\n")
    only_error(member_copy, "2 candidates for *scriptForPI.py", "script")


def test_ppr_not_xml(member_copy):
    ppr = next((member_copy / "script").glob("PPR_*.xml"))
    ppr.write_text("this is not XML <<<")
    only_error(member_copy, "not well-formed XML", ppr.name)


def test_ppr_without_ebs(member_copy):
    ppr = next((member_copy / "script").glob("PPR_*.xml"))
    ppr.write_text("<SciPipeRequest><ProcessingRequests/></SciPipeRequest>")
    only_error(member_copy, "lists no <AsdmDiskName>", ppr.name)


def test_xml_bomb_in_the_ppr_is_refused(member_copy):
    ppr = next((member_copy / "script").glob("PPR_*.xml"))
    lol = "".join(f'<!ENTITY lol{i} "{"&lol%d;" % (i - 1) * 10}">' for i in range(1, 10))
    ppr.write_text(f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY lol0 "lol">{lol}]>'
                   "<SciPipeRequest><AsdmDiskName>&lol9;</AsdmDiskName></SciPipeRequest>")
    only_error(member_copy, "entity", ppr.name)


def test_asdm_missing_a_binary_file(member_copy):
    asdm = next((member_copy / "raw").iterdir())
    victim = sorted((asdm / "ASDMBinary").iterdir())[0]
    victim.unlink()
    only_error(member_copy, "binary data files missing", asdm.name)


def test_malformed_asdm_xml(member_copy):
    asdm = next((member_copy / "raw").iterdir())
    (asdm / "ASDM.xml").write_text("<ASDM><Table><Name>Main</Name><NumberRows>x</NumberRows></Table></ASDM>")
    only_error(member_copy, "<NumberRows> is not a number", "ASDM.xml")


def test_missing_asdm(member_copy, synth_delivery):
    asdm = member_copy / "raw" / naming.asdm_dir(synth_delivery["ebs"][1])
    import shutil
    shutil.rmtree(asdm)
    # scriptForPI v2.5 warns and goes on with the other EBs (tests/test_missing_ebs.py): a
    # warning; an error when every EB is required.
    plan = Delivery(member_copy).plan()
    assert plan["ok"] and plan["raw"]["missing"] == [synth_delivery["ebs"][1]]
    assert any(p["severity"] == "warning" and "the PPR lists this EB" in p["message"] for p in plan["problems"])
    errs = errors(Delivery(member_copy).plan(require_all_ebs=True))
    assert any("the PPR lists this EB" in e["message"] and e["path"].endswith(asdm.name) for e in errs), errs
    r = inspect_cli(member_copy, "--require-all-ebs")
    assert r.returncode == 1 and "the PPR lists this EB" in r.stdout and "Traceback" not in r.stderr


def test_non_utf8_file_name(member_copy):
    bad = os.path.join(os.fsencode(member_copy / "script"), b"caf\xe9.py")
    with open(bad, "wb") as f:
        f.write(b"# latin-1 name\n")
    only_error(member_copy, "not valid UTF-8", "script")


def test_not_a_folder_is_one_line_on_stderr(tmp_path):
    r = inspect_cli(tmp_path / "nope")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "is not a folder" in r.stderr
    with pytest.raises(DeliveryError):
        Delivery(tmp_path / "nope")
