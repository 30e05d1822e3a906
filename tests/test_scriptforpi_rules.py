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
from alma_regen.delivery import Delivery, disk_factor, format_plan, manual_sort_key
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


# ---------------------------------------------------------------- (f) the split: which rule, which version

MAKEIMAGES_PPR_LINES = "".join("<ProcessingProcedure><RecipeName>hif_makeimages</RecipeName></ProcessingProcedure>\n"
                               for _ in range(2))


def pipeline_imaged_member(tmp_path, version="2.5", makeimages=2, fits=1, imaging="# made by the pipeline\n"):
    """A restore delivery as scriptForPI v`version` sees it: a pretty-printed PPR with
    `makeimages` hif_makeimages lines, `fits` product/*_sci.spw*.fits, scriptForImaging.py."""
    ppr = ppr_text(EB1).replace("<ProcessingRequests>", "<ProcessingRequests>\n" + "".join(
        "<ProcessingProcedure><RecipeName>hif_makeimages</RecipeName></ProcessingProcedure>\n"
        for _ in range(makeimages)))
    scripts = {**RESTORE, f"PPR_{MOUS_F}.xml": ppr, f"member.{MOUS_F}.scriptForImaging.py": imaging}
    if version:
        scripts[f"member.{MOUS_F}.scriptForPI.py"] = sfpi_head(version)
    m = member(tmp_path, scripts)
    (m / "product").mkdir()
    for i in range(fits):
        (m / "product" / f"member.{MOUS_F}.Target_sci.spw{25 + 2 * i}.cube.I.pbcor.fits").write_bytes(b"SIMPLE")
    return m


@pytest.mark.parametrize("case, kw, dosplit, needed, rule", [
    # All three conditions (v2.5): the imaging pipeline was used, no split.
    ("pipeline imaged", {}, False, False, "imaging-pipeline-used"),
    # ... unless DOSPLIT.
    ("DOSPLIT", {}, True, True, "imaging-pipeline-used"),
    # One hif_makeimages line is not "more than one": split.
    ("one makeimages line", {"makeimages": 1}, False, True, "imaging-pipeline-used"),
    # No science image in product/: split.
    ("no product fits", {"fits": 0}, False, True, "imaging-pipeline-used"),
    # scriptForImaging.py with code: split (manual imaging).
    ("manual imaging", {"imaging": "tclean(vis='x')\n"}, False, True, "imaging-pipeline-used"),
    # A line with code *and* '#' is a comment line to `grep -v "#"`: still pipeline imaged.
    ("code with a comment", {"imaging": "tclean(vis='x')  # made by hand\n"}, False, False,
     "imaging-pipeline-used"),
    # v1.23 has the same rule; v1.34 too.
    ("v1.23", {"version": "1.23"}, False, False, "imaging-pipeline-used"),
    ("v1.34", {"version": "1.34"}, False, False, "imaging-pipeline-used"),
    # v1.15 and older always split, whatever the imaging.
    ("v1.15 always splits", {"version": "1.15"}, False, True, "always"),
    # No readable scriptForPI: the newest read (v2.5) decides.
    ("no scriptForPI", {"version": None}, False, False, "imaging-pipeline-used"),
])
def test_the_split_decision(tmp_path, case, kw, dosplit, needed, rule):
    m = pipeline_imaged_member(tmp_path, **kw)
    split = Delivery(m).split_needed(dosplit)
    assert (split["needed"], split["rule"]) == (needed, rule), (case, split)
    version = kw.get("version", "2.5")
    assert split["decided_by"].startswith(f"scriptForPI v{version or '2.5'}")
    assert ("(the delivery's)" in split["decided_by"]) == bool(version)
    assert bool(split["reasons"]) == needed and split["why"]
    plan = Delivery(m).plan(staged=False)
    assert plan["split"]["needed"] == (needed if not dosplit else plan["split"]["needed"])
    line = next(ln for ln in format_plan(plan).splitlines() if ln.startswith("split"))
    assert line.endswith(f"[rule: {rule}]")
    head = next(ln for ln in format_plan(plan).splitlines() if ln.startswith("scriptForPI"))
    assert (f"v{version} (the delivery's)" if version else "version unknown: the rules of v2.5") in head


def test_manual_data_split_in_their_own_scripts(tmp_path):
    m = member(tmp_path, {f"{naming.uid_to_file(EB1)}.ms.scriptForCalibration.py": "applyonly\n"})
    split = Delivery(m).split_needed()
    assert split["needed"] and split["rule"] == "manual"


# ---------------------------------------------------------------- (g) manual EB order

# EB uids of one day: the hex parts have no leading zeros, so the names sort wrongly.
ORDERED = ["uid://A002/Xb4264b/X5c1", "uid://A002/Xb4264b/X47af", "uid://A002/Xb4264b/Xa0f3",
           "uid://A002/Xb4264c/X12"]


@pytest.mark.parametrize("version, expected, rule", [
    # v1.34 and v2.5: zero-padded hex before sorting: the observing order.
    ("2.5", ORDERED, "chronological"),
    ("1.34", ORDERED, "chronological"),
    (None, ORDERED, "chronological"),          # no version: v2.5's rule
    # v1.23 sorts the names as they are: X47af before X5c1.
    ("1.23", sorted(ORDERED, key=naming.uid_to_file), "by-name"),
])
def test_manual_eb_order(tmp_path, version, expected, rule):
    scripts = {f"{naming.uid_to_file(e)}.ms.scriptForCalibration.py": "applyonly\n" for e in reversed(ORDERED)}
    if version:
        scripts["scriptForPI.py"] = sfpi_head(version)
    d = Delivery(member(tmp_path, scripts))
    assert d.manual_order()["rule"] == rule
    assert [r["eb"] for r in d.manual_runs()] == expected
    assert d.ppr_ebs() == expected
    plan = Delivery(d.path).plan(staged=False)
    assert [r["eb"] for r in plan["manual"]["runs"]] == expected
    assert f"order {rule}" in format_plan(plan)


def test_manual_sort_key_pads_the_last_two_hex_parts():
    assert manual_sort_key("member.uid___A002_Xb4264b_X5c1.ms.scriptForCalibration.py") == \
        "member.uid___A002_Xb4264b_X005c1"
    assert manual_sort_key("odd.py") == "odd.py"


@pytest.mark.parametrize("version, sd_runs", [("2.5", True), ("1.34", True), ("1.23", False)])
def test_single_dish_scripts_run_after_the_interferometric_ones(tmp_path, version, sd_runs):
    # v1.34/v2.5: `scriptasdms + sdscriptasdms`; v1.23 does not look for SD scripts.
    scripts = {f"{naming.uid_to_file(EB2)}.ms.scriptForCalibration.py": "applyonly\n",
               f"member.{MOUS_F}.{naming.uid_to_file(EB1)}.ms.scriptForSDCalibration.py": "applyonly\n",
               "scriptForPI.py": sfpi_head(version)}
    d = Delivery(member(tmp_path, scripts))
    runs = d.manual_runs()
    expected = [(EB2, "interferometric")] + ([(EB1, "single-dish")] if sd_runs else [])
    assert [(r["eb"], r["kind"]) for r in runs] == expected
    assert d.calibration_kind()["kind"] == "manual"


# ---------------------------------------------------------------- (h) the disk check

@pytest.mark.parametrize("spacesaving, extra, factor", [
    (0, {}, 11), (1, {}, 7), (2, {}, 3), (3, {}, 3), (5, {}, 3), (-1, {}, None),
    (0, {"scriptForFluxCalibration.py": "concat()\n"}, 14),
    (1, {"scriptForPolCalibration.py": "polcal()\n"}, 10),
    (2, {f"member.{MOUS_F}.scriptForImagingPrep.py": "# prep\n"}, 6),   # f counts the file, code or not
    (0, {"scriptForFluxCalibration.py": "x\n", "scriptForPolCalibration.py": "y\n"}, 14),  # f is 0 or 1
])
def test_the_disk_factor(tmp_path, spacesaving, extra, factor):
    m = member(tmp_path, {**RESTORE, f"PPR_{MOUS_F}.xml": ppr_text(EB1), **extra})
    d = Delivery(m)
    rule = d.disk_rule(spacesaving)
    assert rule["factor"] == factor and rule["f"] == (1 if extra else 0)
    disk = d.disk(1000, spacesaving=spacesaving)
    assert disk["needed_bytes"] == (None if factor is None else 1000 * factor)
    assert disk["enough"] is True or factor is not None


@pytest.mark.parametrize("version, script, text, effective", [
    # v1.34/v2.5: a renormalising flux script keeps the *.ms: SPACESAVING 3 -> 1 (7 + 3 = 10 x).
    ("2.5", "scriptForFluxCalibration.py", "es.ACreNorm(vis)\n", 1),
    ("1.34", "scriptForFluxCalibration.py", "es.ACreNorm(vis)\n", 1),
    # v1.23 has no such limit.
    ("1.23", "scriptForFluxCalibration.py", "es.ACreNorm(vis)\n", 3),
    # v2.5 also reads a polarisation script (when there is no flux script); v1.34 does not.
    ("2.5", "scriptForPolCalibration.py", "# Renormalization of the autocorrelations\n", 1),
    ("1.34", "scriptForPolCalibration.py", "# Renormalization of the autocorrelations\n", 3),
])
def test_renormalisation_limits_spacesaving(tmp_path, version, script, text, effective):
    m = member(tmp_path, {**RESTORE, "scriptForPI.py": sfpi_head(version), script: text})
    rule = Delivery(m).disk_rule(3)
    assert rule["effective_spacesaving"] == effective
    assert rule["factor"] == disk_factor(effective, 1)
    assert bool(rule["renormalisation"]) == (effective == 1)


def test_the_bulk_footprint_default_is_scriptforpis_factor():
    from alma_regen.config import Settings
    assert Settings().footprint_factor == disk_factor(0, 0) == 11


# ---------------------------------------------------------------- (i) versions from every place

def make_pdf(lines, compress=True) -> bytes:
    """A small, valid PDF 1.4 as report writers make them: one page, Helvetica, the text
    lines in a Flate-compressed content stream, a cross-reference table with byte offsets.
    Written here byte by byte (no PDF library makes it), read back with pypdf."""
    import zlib

    def esc(t):
        return t.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    content = "BT /F1 11 Tf 14 TL 72 760 Td " + " ".join(f"({esc(t)}) Tj T*" for t in lines) + " ET"
    data = zlib.compress(content.encode("latin-1")) if compress else content.encode("latin-1")
    filt = b" /Filter /FlateDecode" if compress else b""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> "
        b"/Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d%s >>\nstream\n" % (len(data), filt) + data + b"\nendstream",
        b"<< /Producer (ALMA QA2 report) /Title (QA2 report) >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 6 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


QA2_LINES = ["ALMA Quality Assessment (QA2) Report", f"Project: {PROJECT}", f"MOUS: {MOUS}",
             "CASA version: 4.2.2, Pipeline: r31667 (Pipeline-Cycle2-R1-B)", "QA2 Result: PASS"]
MANUAL = {f"{naming.uid_to_file(EB1)}.ms.scriptForCalibration.py": "applyonly\n"}


@pytest.mark.parametrize("readme_name", ["README", f"member.{MOUS_F}.README.txt", "README.txt",
                                         f"{PROJECT}_README_member.txt"])
def test_the_readme_under_any_of_its_names(tmp_path, readme_name):
    m = member(tmp_path, MANUAL, readme=None)
    (m / readme_name).write_text("ALMA Cycle 3\nCASA version used for reduction: 4.5.3\nQA2 Result: PASS\n")
    cv = Delivery(m).casa_version()
    assert cv["version"] == "4.5.3" and cv["source"].endswith(readme_name)


@pytest.mark.parametrize("folder, name, body, version, pipeline", [
    # Cycle 5+: qa/, HTML, the old one-line form.
    ("qa", f"{MOUS_F}.qa2_report.html", "<p>CASA version: 5.4.0-70, Pipeline: 42030M (r42030M)</p>",
     "5.4.0-70", "42030M"),
    # The label and the value in separate cells, with entities: the HTML's text is read.
    ("qa", f"member.{MOUS_F}.qa2_report.html",
     "<table><tr><th>CASA&nbsp;version</th><td>6.5.4-9</td></tr>"
     "<tr><th>Pipeline version</th><td>2023.1.0.124</td></tr></table>", "6.5.4-9", "2023.1.0.124"),
    # Cycles 1-3: qa2/.
    ("qa2", f"{MOUS_F}_qa2_report.html", "<p>CASA version used for reduction: 4.2.2</p>", "4.2.2", None),
])
def test_the_qa2_report_in_qa_or_qa2(tmp_path, folder, name, body, version, pipeline):
    m = member(tmp_path, MANUAL, readme="README without a version line\n")
    (m / folder).mkdir()
    (m / folder / name).write_text(body)
    cv = Delivery(m).casa_version()
    assert (cv["version"], cv["pipeline_version"]) == (version, pipeline)
    assert cv["source"].endswith(f"{folder}/{name}")


@pytest.mark.parametrize("compress", [True, False])
def test_a_qa2_report_that_is_only_a_pdf(tmp_path, compress):
    m = member(tmp_path, MANUAL, readme="README without a version line\n")
    (m / "qa2").mkdir()
    (m / "qa2" / f"{MOUS_F}_QA2_report.pdf").write_bytes(make_pdf(QA2_LINES, compress))
    cv = Delivery(m).casa_version()
    assert (cv["version"], cv["pipeline_version"]) == ("4.2.2", "r31667")
    assert cv["source"].endswith(".pdf")


@pytest.mark.parametrize("bad", [
    b"%PDF-1.4\n this is not a PDF at all",                         # garbage after the header
    make_pdf(QA2_LINES)[:300],                                     # cut off
    b"<html>renamed</html>",                                        # not a PDF
])
def test_a_bad_pdf_is_one_clear_line_and_the_rest_goes_on(tmp_path, bad):
    m = member(tmp_path, MANUAL, readme="README without a version line\n")
    (m / "qa").mkdir()
    (m / "qa" / "a_qa2_report.pdf").write_bytes(bad)
    (m / "qa" / "b_qa2_report.html").write_text("<p>CASA version used for reduction: 5.1.1-5</p>")
    d = Delivery(m)
    assert d.casa_version()["version"] == "5.1.1-5"
    plan = d.plan(staged=False)
    warns = [p for p in plan["problems"] if p["path"].endswith("a_qa2_report.pdf")]
    assert len(warns) == 1 and "\n" not in warns[0]["message"], plan["problems"]
    assert warns[0]["severity"] == "warning" and "cannot be read as a PDF" in warns[0]["message"]


def test_a_huge_pdf_is_not_read(tmp_path, monkeypatch):
    import alma_regen.delivery as delivery
    monkeypatch.setattr(delivery, "_PDF_MAX_BYTES", 1000)
    m = member(tmp_path, MANUAL, readme="README without a version line\n")
    (m / "qa").mkdir()
    (m / "qa" / "qa2_report.pdf").write_bytes(make_pdf(QA2_LINES * 40, compress=False))
    plan = Delivery(m).plan(staged=False)
    assert any("read of a QA2 report: skipped" in p["message"] for p in plan["problems"])
    assert plan["casa_version"]["version"] is None  # manual data: an error says no version


def test_advice_on_a_casa_version_is_not_a_record(tmp_path):
    # A README's advice is not the version of the reduction: the QA2 report's line is.
    m = member(tmp_path, MANUAL, readme="Please use CASA version 6.6.1 or later to image these data.\n")
    (m / "qa").mkdir()
    (m / "qa" / "qa2_report.txt").write_text("CASA version used for reduction: 5.6.1-8\n")
    assert Delivery(m).casa_version()["version"] == "5.6.1-8"


def test_a_readme_version_template_is_not_a_version(tmp_path):
    # Cycle 3 templates said "CASA version used for reduction: 4.x": not a version; the QA2 report is.
    m = member(tmp_path, MANUAL, readme="CASA version used for reduction: 4.x\n")
    (m / "qa2").mkdir()
    (m / "qa2" / "qa2.pdf").write_bytes(make_pdf(QA2_LINES))
    assert Delivery(m).casa_version()["version"] == "4.2.2"


# ---------------------------------------------------------------- (j) a Python 2 scriptForPI on CASA 6

@pytest.mark.parametrize("version, refused", [("1.23", True), ("1.25", True),
                                              pytest.param("1.34", False, marks=pytest.mark.casa)])
def test_a_python2_scriptforpi_is_refused_before_casa_starts(tmp_path, version, refused):
    # v1.25 and older print with statements: CASA 6 cannot even compile them. Refused in one
    # line before anything is touched; v1.34 is Python 3: CASA starts (this stand-in has no
    # more to run than its first lines).
    from alma_regen.casa.registry import load_registry
    from alma_regen.errors import CasaError
    from alma_regen.scriptforpi import run_script_for_pi
    m = member(tmp_path, {**RESTORE, f"PPR_{MOUS_F}.xml": ppr_text(EB1), "scriptForPI.py": sfpi_head(version)})
    launcher = load_registry().modular()
    try:
        run_script_for_pi(m, launcher)
        said = ""
    except CasaError as exc:
        said = str(exc)
    assert ("a Python 2 script" in said) == refused, said
    if refused:
        assert "\n" not in said and not (m / "calibrated").exists()
