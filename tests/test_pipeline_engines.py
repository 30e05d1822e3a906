"""The `scriptforpi` and `pipeline` calibration engines with the REAL ALMA pipeline.

`alma-regen restore --engine scriptforpi|pipeline` on copies of the synthetic
delivery, with a pipeline CASA registered: the runs complete, calibrated/ ends
as a real scriptForPI leaves it (DOMAIN.md), the scriptForPI globals arrive
(DOSPLIT=True: split folders holding every field and the original spw ids),
and a run is judged by its own results: a failed pipeline task fails it, a
printed traceback does not, and an empty calibrated/ after exit 0 is a failure.
What is in the measurement sets is read back here with casatools in a child,
not taken from the engine's own report.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alma_regen import calibration, naming
from alma_regen.casa.runner import CasaRun
from alma_regen.errors import CasaError
from alma_regen.scriptforpi import ASIDE_SUFFIX, put_back_leftovers
from fixtures_synth import run_casa_python, truth_check

pytestmark = pytest.mark.casa

# The pipeline solves its own gains from noisy data (the native restore replays
# the delivered ones): a looser bound than the restore's 1 % and 1 degree.
TRUTH_SCALE, TRUTH_PHASE_DEG = 0.05, 5.0

# Reads what a calibrated/ holds, independently of the engine: per MS its
# columns, the spw ids its data use, its SPECTRAL_WINDOW rows, its fields.
DESCRIBE = """import json, sys
from casatools import msmetadata, table
out = {}
for path in sys.argv[2:]:
    tb, md = table(), msmetadata()
    tb.open(path); cols = tb.colnames(); ddids = sorted(set(tb.getcol("DATA_DESC_ID").tolist())); tb.close()
    tb.open(path + "/SPECTRAL_WINDOW"); spw_rows = tb.nrows(); tb.close()
    tb.open(path + "/DATA_DESCRIPTION"); spw_of = tb.getcol("SPECTRAL_WINDOW_ID").tolist(); tb.close()
    md.open(path)
    out[path] = {"columns": cols, "spw_rows": spw_rows, "fields": sorted(md.fieldnames()),
                 "spws": sorted({spw_of[d] for d in ddids})}
    md.close()
json.dump(out, open(sys.argv[1], "w"))
"""


def restore(member, engine, registry, *extra):
    """`alma-regen restore MEMBER --engine ENGINE ...` as a user runs it, with the
    registry file of tests/fixtures_pipeline.py (the real pipeline registered)."""
    env = dict(os.environ, ALMA_REGEN_CASA_REGISTRY=str(registry))
    return subprocess.run([sys.executable, "-m", "alma_regen.cli", "restore", str(member), "--engine", engine,
                           *extra], env=env, capture_output=True, text=True, timeout=1800)


def copy_member(synth, dest: Path) -> Path:
    src = Path(synth["member_dir"])
    member = dest / src.name
    shutil.copytree(src, member, symlinks=True)
    return member


def describe(paths, workdir) -> dict:
    script = Path(workdir) / "describe_ms.py"
    script.write_text(DESCRIBE)
    out = Path(workdir) / "described.json"
    run_casa_python(script, out, *paths, cwd=workdir)
    return json.loads(out.read_text())


def ebs_of(synth):
    return [naming.uid_to_file(e) for e in synth["ebs"]]


def assert_split_as_scriptforpi(cal: Path, synth, workdir):
    """<EB>.ms.split.cal folders moved up into calibrated/ (not links), with every
    field of the EB and the original science spw ids (reindex=False)."""
    splits = [cal / f"{eb}.ms.split.cal" for eb in ebs_of(synth)]
    for s in splits:
        assert s.is_dir() and not s.is_symlink(), f"{s.name} must be a folder moved up from working/"
    seen = describe([*map(str, splits), *(str(cal / "working" / f"{eb}.ms") for eb in ebs_of(synth))], workdir)
    science = synth["truth"]["science_spws"]
    for eb in ebs_of(synth):
        split, full = seen[str(cal / f"{eb}.ms.split.cal")], seen[str(cal / "working" / f"{eb}.ms")]
        assert "CORRECTED_DATA" in full["columns"], f"{eb}.ms: nothing was applied"
        assert split["fields"] == full["fields"] and len(split["fields"]) >= 2, "all fields, not only the target"
        assert split["spws"] == science, "the original spw ids of the science spws"
        assert split["spw_rows"] == full["spw_rows"], "reindex=False keeps every SPECTRAL_WINDOW row"


# ---------------------------------------------------------------- the pipeline engine

@pytest.fixture(scope="module")
def pipeline_rerun(synth_delivery, pipeline_registry_file, tmp_path_factory):
    """`restore --engine pipeline --dosplit --spacesaving 0` on a copy of the delivery."""
    member = copy_member(synth_delivery, tmp_path_factory.mktemp("pipeline-engine"))
    proc = restore(member, "pipeline", pipeline_registry_file, "--dosplit", "--spacesaving", "0")
    return member, proc


def test_pipeline_engine_runs_the_pipescript_to_completion(pipeline_rerun, synth_delivery, tmp_path):
    member, proc = pipeline_rerun
    assert proc.returncode == 0, proc.stderr[-3000:]
    cal = member / "calibrated"
    summary = json.loads((cal / "calibration.json").read_text())
    assert summary["plan"]["engine"] == "pipeline"
    tasks = summary["ebs"][0]["pipeline_tasks"]
    assert [t["task"] for t in tasks][:1] == ["hifa_importdata"] and "hif_applycal" in [t["task"] for t in tasks]
    assert not any(t["failed"] for t in tasks)
    # The rerun's working/: the EBs under the bare names the pipescript uses.
    for eb in ebs_of(synth_delivery):
        link = cal / "working" / eb
        assert link.is_symlink() and link.resolve() == (member / "raw" / f"{eb}.asdm.sdm").resolve()
    assert (cal / "working" / "flux.csv").is_file()
    assert_split_as_scriptforpi(cal, synth_delivery, tmp_path)
    # The full calibration was forced by setting the restore script aside; it is back.
    assert next((member / "script").glob("*casa_piperestorescript.py")).is_file()


def test_the_pipeline_calibration_recovers_the_truth(pipeline_rerun, synth_delivery, tmp_path):
    """The real pipeline's own solutions, applied and split, give the true visibilities
    of the calibrator and the target on every science spw."""
    member, proc = pipeline_rerun
    assert proc.returncode == 0, proc.stderr[-3000:]
    science = synth_delivery["truth"]["science_spws"]
    for eb in ebs_of(synth_delivery):
        split = member / "calibrated" / f"{eb}.ms.split.cal"
        rows = truth_check(split, synth_delivery, "DATA", tmp_path)["rows"]
        assert {r["spw"] for r in rows} == set(science)
        assert {r["field"] for r in rows} == {"J1924-2914", "TW_Hya_synth"}
        for r in rows:
            assert abs(r["scale"] - 1) < TRUTH_SCALE and abs(r["phase_deg"]) < TRUTH_PHASE_DEG, r


def test_globals_reach_scriptforpi_as_it_reads_them(pipeline_rerun):
    member, proc = pipeline_rerun
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads((member / "calibrated" / "scriptForPI.globals.json").read_text())
    assert seen == {"SPACESAVING": 0, "DOSPLIT": True, "DOCONTSUB": False, "mode": "pipeline"}


def test_a_failed_pipeline_task_fails_the_run(synth_delivery, pipeline_registry_file, tmp_path):
    member = copy_member(synth_delivery, tmp_path)
    # A flux file the pipeline cannot read: hifa_importdata, the first task, fails.
    (member / "calibration" / "flux.csv").write_text("source,flux\nJ1924-2914,1.3\n")
    proc = restore(member, "pipeline", pipeline_registry_file)
    assert proc.returncode != 0
    assert "hifa_importdata" in proc.stderr and "failed" in proc.stderr, proc.stderr[-3000:]


def test_an_empty_calibrated_after_exit_0_is_a_failure(synth_delivery, pipeline_registry_file, tmp_path):
    member = copy_member(synth_delivery, tmp_path)
    # What a real scriptForPI does when it finds no PPR: calibrated/ made, "Done", exit 0.
    script = next((member / "script").glob("*scriptForPI.py"))
    script.write_text("import os\nos.mkdir('../calibrated')\n"
                      "print('Done. Please find results in directory calibrated.')\n")
    proc = restore(member, "scriptforpi", pipeline_registry_file)
    assert proc.returncode != 0
    assert "nothing was calibrated" in proc.stderr, proc.stderr[-3000:]


# ---------------------------------------------------------------- the scriptforpi engine (restore)

def test_scriptforpi_restore_with_the_real_pipeline(synth_delivery, pipeline_registry_file, tmp_path):
    """The delivery's scriptForPI restores with the real hifa_restoredata; a traceback
    printed after the tasks succeeded (as the weblog prints without a display) does
    not fail the run."""
    member = copy_member(synth_delivery, tmp_path)
    restore_script = next((member / "script").glob("*casa_piperestorescript.py"))
    restore_script.write_text(restore_script.read_text() + (
        "import traceback\ntry:\n    raise RuntimeError('weblog: plotms cannot open a display')\n"
        "except RuntimeError:\n    traceback.print_exc()\n"))
    proc = restore(member, "scriptforpi", pipeline_registry_file, "--dosplit", "--spacesaving", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RuntimeError: weblog: plotms cannot open a display" in proc.stderr + proc.stdout
    cal = member / "calibrated"
    assert os.readlink(cal / "products") == "../calibration"
    for eb in ebs_of(synth_delivery):
        assert (cal / "rawdata" / eb).resolve() == (member / "raw" / f"{eb}.asdm.sdm").resolve()
    tasks = json.loads((cal / "calibration.json").read_text())["ebs"][0]["pipeline_tasks"]
    assert [t["task"] for t in tasks] == ["hifa_restoredata"] and not tasks[0]["failed"]
    assert json.loads((cal / "scriptForPI.globals.json").read_text()) == {
        "SPACESAVING": 0, "DOSPLIT": True, "DOCONTSUB": False, "mode": "restore"}
    assert_split_as_scriptforpi(cal, synth_delivery, tmp_path)


# ---------------------------------------------------------------- the verdict on a report (no CASA)

def test_a_calibration_that_applied_nothing_is_a_failure(tmp_path):
    """hifa_restoredata drops calapply lines it cannot map and then applies nothing,
    with every task a success: no CORRECTED_DATA in working/<EB>.ms is the sign."""
    eb = "uid://A002/Xb1/X1"
    ms = {"columns": ["DATA"], "rows": 10, "spw_rows": 3, "data_spws": [0, 1], "fields": ["J1924-2914", "T"]}
    report = {"tasks": [{"task": "hifa_restoredata", "stage": 1, "failed": False, "error": None}],
              "calibrated": {"entries": {"uid___A002_Xb1_X1.ms.split.cal": {"link": None, "dir": True, "ms": ms}},
                             "working_ms": {"uid___A002_Xb1_X1.ms": ms}}}
    run = CasaRun(command=["casa"], cwd=str(tmp_path), env={}, returncode=0)
    with pytest.raises(CasaError, match="applied nothing"):
        calibration.outputs_of(tmp_path, [eb], run, report)
    report["calibrated"]["working_ms"]["uid___A002_Xb1_X1.ms"] = dict(ms, columns=["DATA", "CORRECTED_DATA"])
    [record] = calibration.outputs_of(tmp_path, [eb], run, report)
    assert record["split"] and record["split_spws"] == [0, 1] and record["fields"] == ms["fields"]


def test_a_restore_script_left_aside_by_a_killed_run_is_put_back(tmp_path):
    script = tmp_path / "script"
    script.mkdir()
    aside = script / ("member.x.hifa_calimage.casa_piperestorescript.py" + ASIDE_SUFFIX)
    aside.write_text("h_init()\n")
    put_back_leftovers(tmp_path)
    assert not aside.exists()
    assert (script / "member.x.hifa_calimage.casa_piperestorescript.py").read_text() == "h_init()\n"
