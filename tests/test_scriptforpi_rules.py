"""scriptForPI's own rules for finding things in a delivery (issue 10, first part),
each case with the decision it must give.

What scriptForPI does was read from real copies (DOMAIN.md, "scriptForPI,
exactly"): v1.23 (2017), v1.34 (2022) and v2.5 (2023, the newest readable). Where
they differ the newest is followed, and the test says so.

The deliveries here are hand-made file layouts (only the layout matters), so these
tests need neither CASA nor the synthetic delivery.
"""
import re
import runpy

import pytest

from airflow_env import ROOT
from alma_regen import naming
from alma_regen.delivery import Delivery, format_plan
from alma_regen.errors import DeliveryError, PermanentError

MOUS = "uid://A001/X1/X2"
MOUS_F = "uid___A001_X1_X2"
EB1, EB2 = "uid://A002/Xb4264b/X47af", "uid://A002/Xb4264b/X5c1"
PROJECT = "2015.1.00419.S"


def ppr_text(*ebs):
    refs = "".join(f"<AsdmIdentifier><AsdmDiskName>{naming.uid_to_file(e)}</AsdmDiskName></AsdmIdentifier>"
                   for e in ebs)
    return (f"<SciPipeRequest><ProjectSummary><ProposalCode>{PROJECT}</ProposalCode></ProjectSummary>"
            f"<ProcessingRequests><ProcessingRequest><DataSet>{refs}</DataSet></ProcessingRequest>"
            "</ProcessingRequests></SciPipeRequest>")


def manifest_text(casa=None, pipeline=None):
    versions = (f'<casaversion name="{casa}"/>' if casa else "") + \
               (f'<pipeline_version name="{pipeline}"/>' if pipeline else "")
    return (f'<piperesults name="{MOUS_F}"><ous name="{MOUS_F}">{versions}'
            '<procedure_name name="hifa_calimage"/></ous></piperesults>')


def member(tmp_path, scripts, readme="CASA version used for reduction: 6.5.4-9\n", manifest=None, mous_f=MOUS_F):
    """member.<MOUS>/ with a README, script/ holding `scripts` {name: text}, and
    calibration/ with a pipeline manifest when `manifest` is given."""
    m = tmp_path / f"member.{mous_f}"
    (m / "script").mkdir(parents=True)
    (m / "calibration").mkdir()
    (m / "raw").mkdir()
    if readme is not None:
        (m / f"member.{mous_f}.README.txt").write_text(readme)
    for name, text in scripts.items():
        (m / "script" / name).write_text(text)
    if manifest is not None:
        (m / "calibration" / f"{mous_f}.hifa_calimage.pipeline_manifest.xml").write_text(manifest)
    return m


RESTORE = {f"member.{MOUS_F}.hifa_calimage.casa_piperestorescript.py": "h_init()\nhifa_restoredata()\n"}


def errors(plan):
    return [p for p in plan["problems"] if p["severity"] == "error"]


# ---------------------------------------------------------------- (a) which PPR

def test_of_two_pprequests_the_cal_one_is_taken(tmp_path):
    # v2.5 (and v1.34) glob '*cal*pprequest.xml': a calibration and an imaging-only PPR
    # side by side give the calibration one. Before: "2 PPR files" error.
    m = member(tmp_path, {**RESTORE,
                          f"member.{MOUS_F}.hifa_calimage.pprequest.xml": ppr_text(EB1),
                          f"member.{MOUS_F}.hifa_image.pprequest.xml": ppr_text(EB2)})
    d = Delivery(m)
    assert d.ppr().name == f"member.{MOUS_F}.hifa_calimage.pprequest.xml"
    assert d.ppr_ebs() == [EB1]
    plan = Delivery(m).plan(staged=False)
    assert errors(plan) == [] and plan["ppr"]["ebs"] == [EB1]


def test_a_ppr_file_comes_before_any_pprequest(tmp_path):
    # Every version looks for '*PPR*.xml' (the old naming) first and only then for a
    # pprequest. Before: both together were "2 PPR files".
    m = member(tmp_path, {**RESTORE, f"PPR_{MOUS_F}.xml": ppr_text(EB1),
                          f"member.{MOUS_F}.hifa_calimage.pprequest.xml": ppr_text(EB2)})
    assert Delivery(m).ppr().name == f"PPR_{MOUS_F}.xml"
    assert Delivery(m).ppr_ebs() == [EB1]


def test_a_ppr_name_with_a_prefix(tmp_path):
    # '*PPR*.xml': PPR anywhere in the name, not only at its start. Before: not found.
    m = member(tmp_path, {**RESTORE, f"member.{MOUS_F}.PPR.xml": ppr_text(EB1)})
    assert Delivery(m).ppr().name == f"member.{MOUS_F}.PPR.xml"


def test_a_lone_pprequest_without_cal_is_still_taken(tmp_path):
    # Decision where versions differ: v1.23 took any '*pprequest.xml', v2.5 only a
    # '*cal*' one. A single pprequest is the delivery's only EB list (the pipeline
    # exports it as <MOUS>.pprequest.xml), so it is taken; 'cal' only breaks ties.
    m = member(tmp_path, {**RESTORE, f"{MOUS_F}.pprequest.xml": ppr_text(EB1)})
    assert Delivery(m).ppr_ebs() == [EB1]


@pytest.mark.parametrize("names, needle", [
    # Two calibration PPRs: v2.5 stops ("non-unique calibration PPR").
    ([f"member.{MOUS_F}.hifa_calimage.pprequest.xml", f"member.{MOUS_F}.hifa_cal.pprequest.xml"],
     "2 *cal*pprequest.xml"),
    # Two pprequests, neither for calibration: the rule cannot choose.
    ([f"member.{MOUS_F}.hifa_image.pprequest.xml", f"{MOUS_F}.pprequest.xml"], "2 *pprequest.xml"),
    # Two old-style PPRs: every version stops ("non-unique PPR").
    ([f"PPR_{MOUS_F}.xml", f"PPR_{MOUS_F}_2.xml"], "2 *PPR*.xml"),
])
def test_when_the_rule_leaves_several_it_is_one_clear_error(tmp_path, names, needle):
    m = member(tmp_path, {**RESTORE, **{n: ppr_text(EB1) for n in names}})
    with pytest.raises(DeliveryError) as exc:
        Delivery(m).ppr()
    assert needle in exc.value.detail and all(n in exc.value.detail for n in names)
    errs = errors(Delivery(m).plan(staged=False))
    ppr_errs = [e for e in errs if needle in e["message"]]
    assert len(ppr_errs) == 1 and "\n" not in ppr_errs[0]["message"], errs


def test_no_ppr_at_all_is_one_clear_error(tmp_path):
    m = member(tmp_path, RESTORE)
    assert Delivery(m).ppr() is None
    errs = errors(Delivery(m).plan(staged=False))
    assert [e["message"] for e in errs if "no PPR" in e["message"]], errs


# ---------------------------------------------------------------- (b) which pipescript

@pytest.mark.parametrize("name", [
    f"member.{MOUS_F}.hifa_calimage.casa_pipescript.py",   # the recipe word (v1.34, v2.5 '*cal*')
    f"member.{MOUS_F}.casa_pipescript.py",                 # member prefix, no recipe word (v1.23)
    f"{MOUS_F}.casa_pipescript.py",                        # as older pipelines exported it
    "casa_pipescript.py",
])
def test_a_calibration_pipescript_is_found(tmp_path, name):
    # No restore script: the pipescript means the full calibration pipeline.
    # Before: the two names without a recipe word were not found.
    m = member(tmp_path, {name: "h_init()\nhifa_importdata()\n", f"PPR_{MOUS_F}.xml": ppr_text(EB1)})
    d = Delivery(m)
    assert d.script("pipescript").name == name
    assert d.calibration_kind()["kind"] == "pipeline"


def test_an_imaging_only_pipescript_cannot_calibrate(tmp_path):
    # A named recipe without 'cal' (hifa_image) is never a calibration: v2.5 does not
    # see it, and v1.23's '*casa_pipescript.py' predates such recipes.
    m = member(tmp_path, {f"member.{MOUS_F}.hifa_image.casa_pipescript.py": "h_init()\n",
                          f"PPR_{MOUS_F}.xml": ppr_text(EB1)})
    assert Delivery(m).script("pipescript") is None
    with pytest.raises(DeliveryError, match="nothing can calibrate"):
        Delivery(m).calibration_kind()


def test_the_cal_pipescript_wins_over_one_without_a_recipe_word(tmp_path):
    cal, bare = f"member.{MOUS_F}.hifa_calimage.casa_pipescript.py", f"member.{MOUS_F}.casa_pipescript.py"
    m = member(tmp_path, {cal: "h_init()\n", bare: "h_init()\n", f"PPR_{MOUS_F}.xml": ppr_text(EB1)})
    assert Delivery(m).script("pipescript").name == cal


def test_two_calibration_pipescripts_are_an_error(tmp_path):
    # v2.5: "non-unique calibration pipescript".
    names = [f"member.{MOUS_F}.hifa_calimage.casa_pipescript.py", f"member.{MOUS_F}.hifa_cal.casa_pipescript.py"]
    m = member(tmp_path, {**{n: "h_init()\n" for n in names}, f"PPR_{MOUS_F}.xml": ppr_text(EB1)})
    with pytest.raises(DeliveryError, match="2 candidates for \\*casa_pipescript.py"):
        Delivery(m).script("pipescript")


# ---------------------------------------------------------------- (c) early MOUS uids

EARLY = "uid://A002/X3ebb3b/X1c"   # Cycle 0-2 MOUS uids live in archive A002


def _mous_param():
    dag = runpy.run_path(str(ROOT / "dags" / "alma_regenerate.py"))["dag"]
    return dag.params.get_param("mous_uid")


@pytest.fixture(scope="module")
def mous_param():
    return _mous_param()


@pytest.mark.parametrize("uid", ["uid://A001/X1296/X133", EARLY, "uid://A002/Xb4264b/X47af"])
def test_the_form_accepts_mous_uids_of_both_archives(mous_param, uid):
    # jsonschema checks a pattern with re.search; Param.resolve is what the trigger runs.
    assert re.search(naming.MOUS_PARAM_PATTERN, uid)
    assert mous_param.resolve(uid) == uid


@pytest.mark.parametrize("uid", [
    "uid://A001/X1296/X133\n",     # a pasted trailing newline: `$` alone would let it through
    "uid://A002/X3ebb3b/X1c\n",
    "uid___A002_X3ebb3b_X1c",      # the file form
    "uid://A003/X1/X2",            # no MOUS lives in another archive
    "uid://a002/X1/X2",
    "uid:/A002/X1/X2",
    " uid://A002/X1/X2",
    "uid://A002/X1/X2/",
    "uid://A002/X1",
])
def test_the_form_still_refuses(mous_param, uid):
    from airflow.sdk.exceptions import ParamValidationError
    assert not re.search(naming.MOUS_PARAM_PATTERN, uid)
    with pytest.raises(ParamValidationError):
        mous_param.resolve(uid)


def test_naming_handles_an_early_mous_uid(tmp_path):
    f = "uid___A002_X3ebb3b_X1c"
    assert naming.uid_to_file(EARLY) == f and naming.file_to_uid(f) == EARLY
    assert naming.member_dir(EARLY) == f"member.{f}"
    assert naming.auxiliary_tar(PROJECT, EARLY) == f"{PROJECT}_{f}_auxiliary.tar"
    from datetime import datetime, timezone
    run = naming.run_id(EARLY, datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    assert naming.mous_of_run_id(run) == EARLY
    m = member(tmp_path, {**RESTORE, f"PPR_{f}.xml": ppr_text(EB1)}, mous_f=f)
    assert Delivery(m).mous_uid == EARLY
    with pytest.raises(PermanentError):
        naming.uid_to_file(EARLY + "\n")


# ---------------------------------------------------------------- (d) versions without a README line

MODERN_README = "Please install the latest CASA release to work with these data.\n"


def test_versions_come_from_the_manifest_when_the_readme_has_no_line(tmp_path):
    m = member(tmp_path, {**RESTORE, f"PPR_{MOUS_F}.xml": ppr_text(EB1)}, readme=MODERN_README,
               manifest=manifest_text("6.5.4-9", "2023.1.0.124"))
    plan = Delivery(m).plan(staged=False)
    assert errors(plan) == []
    cv = plan["casa_version"]
    assert (cv["version"], cv["pipeline_version"]) == ("6.5.4-9", "2023.1.0.124")
    assert cv["source"].endswith("pipeline_manifest.xml") and cv["decision"] is None


@pytest.mark.parametrize("manifest", [None, manifest_text()])
def test_a_pipeline_delivery_without_any_version_says_what_it_will_use(tmp_path, manifest):
    # Issue 10: planning stopped here. A pipeline-calibrated delivery runs with the
    # newest pipeline CASA installed, or natively on modular CASA (the registry's own
    # rule for an unrecorded version), and inspect says so as a warning.
    m = member(tmp_path, {**RESTORE, f"PPR_{MOUS_F}.xml": ppr_text(EB1)}, readme=MODERN_README,
               manifest=manifest)
    plan = Delivery(m).plan(staged=False)
    assert errors(plan) == [], errors(plan)
    cv = plan["casa_version"]
    assert cv["version"] is None and cv["source"] is None
    assert "no CASA version in README" in cv["decision"] and "manifest" in cv["decision"]
    assert "newest pipeline CASA" in cv["decision"] and "native engine" in cv["decision"]
    assert any(p["severity"] == "warning" and p["message"] == cv["decision"] for p in plan["problems"])
    text = format_plan(plan)
    assert cv["decision"] in text and "NOT READY" not in text


def test_manual_calibration_without_any_version_still_stops(tmp_path):
    # Manually calibrated data need the exact CASA of the reduction: no guess.
    m = member(tmp_path, {f"{naming.uid_to_file(EB1)}.ms.scriptForCalibration.py": "applyonly = True\n"},
               readme=MODERN_README)
    plan = Delivery(m).plan(staged=False)
    assert [e for e in errors(plan) if "CASA version used for reduction" in e["message"]], plan["problems"]
    with pytest.raises(DeliveryError):
        Delivery(m).casa_version()


# ---------------------------------------------------------------- (e) the delivery's scriptForPI version

def sfpi_head(version, date="2023/10/03 16:56:39"):
    """The first lines of a real scriptForPI (as every read copy starts, v1.7 to v2.5)."""
    return (f"# ALMA Data Reduction Script\n# $Id: scriptForPI.py,v {version} {date} dpetry Exp $\n\n"
            '"""\nALMA scriptForPI.py - control script to restore the calibrated ALMA data\n"""\n'
            "import os\napplyonly = True\n")


@pytest.mark.parametrize("name, version, expected", [
    (f"member.{MOUS_F}.scriptForPI.py", "2.5", (2, 5)),     # v2.5, member prefix
    ("scriptForPI.py", "1.34", (1, 34)),                    # v1.34, no prefix
    (f"member.{MOUS_F}.scriptForPI.py", "1.23", (1, 23)),
    ("scriptForPI.py", "1.7", (1, 7)),
])
def test_the_scriptforpi_version_is_read_from_its_id_line(tmp_path, name, version, expected):
    m = member(tmp_path, {**RESTORE, name: sfpi_head(version)})
    assert Delivery(m).scriptforpi_version() == expected


@pytest.mark.parametrize("scripts", [
    {},                                                                   # no scriptForPI
    {"scriptForPI.py": "# ALMA Data Reduction Script\nimport os\n"},     # no $Id line
    {"scriptForPI.py": "# $Id: scriptForImaging.py,v 1.2 2017/01/01 $\n"},  # another file's id
    {"scriptForPI.py": sfpi_head("2.5"), f"member.{MOUS_F}.scriptForPI.py": sfpi_head("1.34")},  # two: ambiguous
])
def test_no_scriptforpi_version_when_it_cannot_be_told(tmp_path, scripts):
    m = member(tmp_path, {**RESTORE, **scripts})
    assert Delivery(m).scriptforpi_version() is None


def test_the_scriptforpi_version_survives_hostile_bytes(tmp_path):
    # Not UTF-8 around the line, and a huge file: read bounded, never run.
    m = member(tmp_path, RESTORE)
    (m / "script" / "scriptForPI.py").write_bytes(b"\xff\xfe# $Id: scriptForPI.py,v 1.34 2022/08/26 $\n"
                                                  + b"x = 1\n" * 200_000)
    assert Delivery(m).scriptforpi_version() == (1, 34)
