"""A PPR EB the archive lacks, end to end (issue 10 item 1, missing EBs).

scriptForPI v2.5 (read through the code search): "ERROR: the following ASDMs have calibration
information but are absent from directory raw: [...] Will try to proceed with the rest ...",
and "ERROR: Nothing to process." when none is left. Ours: staging warns, records what the
archive said (member/.missing-ebs.json) and stages the rest; the plan warns; the calibration
and imaging go on over the EBs present; the published manifest says `partial`. The DAG's
`require_all_ebs` and the `--require-all-ebs` flags make it an error. The expected decision
is stated per case.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace

import archive_builder as ab
from archive_builder import FAST
import pytest

from alma_regen import naming
from alma_regen.member import Member
from alma_regen.staging import HttpSource, member_path, stage_mous
from alma_regen.staging.errors import NotFoundError
from alma_regen.staging.stage import MISSING_EBS, read_missing_ebs

EXTRA = ab.MISSING_EB  # in the PPR, not in the archive


@pytest.fixture
def archive(tmp_path):
    return ab.build_partial_archive(tmp_path / "archive")


def problems(plan, severity):
    return [p["message"] for p in plan["problems"] if p["severity"] == severity]


def test_staging_goes_on_without_an_eb_the_archive_lacks(tmp_path, archive, archive_server, caplog):
    # Decision: a warning, the other EBs staged, the record names the EB and "not listed";
    # the plan after staging warns (ok), and is an error with require_all_ebs.
    served = archive_server(archive.dir)
    summary = stage_mous(archive.mous, HttpSource(served.url), tmp_path / "work", FAST)
    assert summary["ebs"] == list(archive.ebs) and summary["missing_ebs"] == [EXTRA]
    assert any(EXTRA in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    member = Member.of(tmp_path / "work", archive.mous)
    assert [(m["eb"], m["archive"]) for m in read_missing_ebs(member)] == [(EXTRA, "not listed")]
    plan = member.delivery.plan()
    assert plan["raw"]["missing"] == [EXTRA]
    assert any(EXTRA.split("/")[-1] not in m and "partial" in m for m in problems(plan, "warning"))
    assert not any("missing" in m for m in problems(plan, "error"))
    strict = member.delivery.plan(require_all_ebs=True)
    assert not strict["ok"] and any("missing" in m for m in problems(strict, "error"))


def test_the_archive_s_error_row_for_an_eb_is_recorded(tmp_path, archive, archive_server):
    # Decision: the EB the archive answered with an error row is left out, and the record (and
    # the plan's warning) quote what the archive said.
    ab.write_tar(archive.path(naming.auxiliary_tar(archive.project, archive.mous)),
                 ab.aux_members(archive.mous, archive.ebs), ab.prefix())
    served = archive_server(archive.dir)
    name = archive.asdm_name(archive.ebs[1])
    served.faults(rows={name: {"error_message": "NotFoundFault: not in the NGAS cluster"}})
    summary = stage_mous(archive.mous, HttpSource(served.url), tmp_path / "work", FAST)
    assert summary["missing_ebs"] == [archive.ebs[1]] and name not in served.stats()["requests"]
    member = Member.of(tmp_path / "work", archive.mous)
    assert "NotFoundFault: not in the NGAS cluster" in read_missing_ebs(member)[0]["archive"]
    assert any("NotFoundFault" in m for m in problems(member.delivery.plan(), "warning"))


def test_require_all_ebs_stops_before_any_asdm(tmp_path, archive, archive_server):
    served = archive_server(archive.dir)
    with pytest.raises(NotFoundError, match=naming.uid_to_file(EXTRA)):
        stage_mous(archive.mous, HttpSource(served.url), tmp_path / "work", replace(FAST, require_all_ebs=True))
    assert not any(n.endswith(".asdm.sdm.tar") for n in served.stats()["requests"])


def test_none_of_the_ppr_ebs_in_the_archive_is_an_error(tmp_path, archive, archive_server):
    # Decision: scriptForPI's "Nothing to process": an error even without require_all_ebs.
    for eb in archive.ebs:
        archive.path(archive.asdm_name(eb)).unlink()
    served = archive_server(archive.dir)
    with pytest.raises(NotFoundError, match="none of its EBs"):
        stage_mous(archive.mous, HttpSource(served.url), tmp_path / "work", FAST)


def test_a_later_complete_staging_clears_the_record(tmp_path, archive, archive_server):
    served = archive_server(archive.dir)
    stage_mous(archive.mous, HttpSource(served.url), tmp_path / "work", FAST)
    member = member_path(tmp_path / "work", archive.mous)
    assert (member / MISSING_EBS).is_file()
    ab.write_tar(archive.path(naming.auxiliary_tar(archive.project, archive.mous)),
                 ab.aux_members(archive.mous, archive.ebs), ab.prefix())
    assert stage_mous(archive.mous, HttpSource(served.url), tmp_path / "work", FAST)["missing_ebs"] == []
    assert not (member / MISSING_EBS).exists()


def test_cli_stage_and_the_require_all_ebs_flag(tmp_path, archive, archive_server):
    served = archive_server(archive.dir)
    base = [sys.executable, "-m", "alma_regen.cli", "stage", archive.mous, "--source", served.url]
    r = subprocess.run(base + ["--workdir", str(tmp_path / "a")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["missing_ebs"] == [EXTRA]
    r = subprocess.run(base + ["--workdir", str(tmp_path / "b"), "--require-all-ebs"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if "error:" in ln] == [
        next(ln for ln in r.stderr.splitlines() if "error:" in ln)]
    assert naming.uid_to_file(EXTRA) in r.stderr


# ---------------------------------------------------------------- with real CASA, end to end

@pytest.fixture(scope="module")
def partial_archive(synth_delivery, tmp_path_factory):
    """The synthetic 2-EB archive without its second EB's ASDM tar."""
    out = tmp_path_factory.mktemp("partial") / "archive"
    shutil.copytree(synth_delivery["archive_dir"], out)
    (out / naming.asdm_tar(synth_delivery["project"], synth_delivery["ebs"][1])).unlink()
    return out


def test_a_partial_run_is_calibrated_imaged_and_published_as_partial(tmp_path, synth_delivery, partial_archive,
                                                                     archive_server, seaweedfs):
    # Decision: staging warns; calibration restores EB 1 only (native, as the delivery says);
    # imaging goes native (the delivered scriptForImaging names both EBs' MSs); the manifest
    # says partial: {missing_ebs: [EB 2], reasons: {EB 2: "not listed"}}.
    from alma_regen import calibration, imaging
    from alma_regen.calibrated import Options
    from alma_regen.products.publish import publish
    eb1, eb2 = synth_delivery["ebs"]
    served = archive_server(partial_archive)
    summary = stage_mous(synth_delivery["mous_uid"], HttpSource(served.url), tmp_path / "work", FAST)
    assert summary["ebs"] == [eb1] and summary["missing_ebs"] == [eb2]
    member = Member.of(tmp_path / "work", synth_delivery["mous_uid"])
    plan = member.delivery.plan()
    assert plan["ok"], plan["problems"]
    cal = calibration.calibrate(member, Options())
    assert cal["plan"]["engine"] == "native" and cal["plan"]["ebs"] == [eb1]
    assert [e["eb"] for e in cal["ebs"]] == [eb1]
    choice = imaging.choose_engine(member)
    assert choice["engine"] == "native" and "partial run" in choice["reason"]
    imaging.image(member, workers=1, modes=("cont",))
    bucket = seaweedfs.bucket("partial")
    manifest = publish(member, f"s3://{bucket}/p", run="r1", client=seaweedfs.client())
    assert manifest["partial"] == {"missing_ebs": [eb2], "reasons": {eb2: "not listed"}}


# ---------------------------------------------------------------- a partial run, engine by engine
# What the real software does with a partial run, seen with the real pipeline (2025.1.1.61) under
# the delivery's scriptForPI, which (as v2.5) drops the missing EB from its own lists and runs the
# delivery's scripts unchanged:
# - the restore script lists every EB: hifa_restoredata logs "Error processing <EB>" for the missing
#   one and restores the others, right (the real run below);
# - the calibration pipescript imports every EB: hifa_importdata fails on the missing one, nothing
#   is calibrated ("pipeline task(s) failed: stage 1 hifa_importdata"): the pipeline engine is
#   refused before any CASA starts, in one line naming the EB.

@pytest.fixture
def partial_member(member_copy, synth_delivery):
    """The synthetic 2-EB delivery with its second EB's ASDM gone from raw/."""
    shutil.rmtree(Member.at(member_copy).asdm(synth_delivery["ebs"][1]))
    return member_copy


def _shape(member, setup):
    m = Member.at(member)
    if setup == "selfcal":  # what the native restore cannot do: auto goes to scriptForPI
        (m.calibration / f"{naming.uid_to_file(m.delivery.mous_uid)}.selfcal.json").write_text("{}\n")
    elif setup == "pipescript-only":  # no restore script: only the full calibration can calibrate
        m.delivery.script("restore").unlink()


@pytest.mark.parametrize("engine, setup, expected", [
    ("auto", "restore", "native"),                # native restores the EB present
    ("native", "restore", "native"),
    ("scriptforpi", "restore", "scriptforpi"),    # hifa_restoredata copes (the real run below)
    ("auto", "selfcal", "scriptforpi"),           # native cannot restore it right; scriptForPI copes
    ("pipeline", "restore", "refused"),           # a full calibration, forced: hifa_importdata would fail
    ("auto", "pipescript-only", "refused"),       # auto can only pick the pipeline, which would fail
    ("pipeline", "pipescript-only", "refused"),
])
def test_each_engine_s_decision_on_a_partial_run(partial_member, synth_delivery, pipeline_registry,
                                                 engine, setup, expected):
    from alma_regen import calibration
    from alma_regen.calibrated import Options
    from alma_regen.errors import PermanentError
    eb1, eb2 = synth_delivery["ebs"]
    _shape(partial_member, setup)
    if expected == "refused":
        with pytest.raises(PermanentError) as exc:
            calibration.plan(partial_member, Options(engine=engine), pipeline_registry)
        msg = str(exc.value)
        assert "engine pipeline refused for a partial run" in msg and eb2 in msg and "\n" not in msg
        assert eb1 not in msg
        return
    p = calibration.plan(partial_member, Options(engine=engine), pipeline_registry)
    assert p.engine == expected and p.ebs == [eb1]
    assert f"a partial run ({eb2} not in raw/)" in p.reason


def test_cli_refuses_the_pipeline_engine_on_a_partial_run_before_casa(partial_member, synth_delivery,
                                                                       pipeline_env):
    r = subprocess.run([sys.executable, "-m", "alma_regen.cli", "restore", str(partial_member),
                        "--engine", "pipeline"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and synth_delivery["ebs"][1] in errors[0], r.stderr[-2000:]
    assert not (partial_member / "calibrated").exists(), "nothing may start"


def test_scriptforpi_restores_a_partial_run_with_the_real_pipeline(partial_member, synth_delivery,
                                                                   pipeline_registry, tmp_path):
    # Decision: the run goes on (the real hifa_restoredata reports the missing EB and restores the
    # other); EB 1's split holds the true visibilities; the summary lists EB 1 only.
    from alma_regen import calibration
    from alma_regen.calibrated import Options
    from fixtures_synth import truth_check
    eb1, eb2 = synth_delivery["ebs"]
    summary = calibration.calibrate(partial_member, Options(engine="scriptforpi", spacesaving=0),
                                    pipeline_registry)
    assert summary["plan"]["engine"] == "scriptforpi" and [r["eb"] for r in summary["ebs"]] == [eb1]
    log = "\n".join(p.read_text(errors="replace") for p in (partial_member / "script").glob("casa-*.log"))
    assert f"Error processing {naming.uid_to_file(eb2)}" in log, "the real pipeline saw the missing EB"
    cal = partial_member / "calibrated"
    assert not list(cal.glob(f"{naming.uid_to_file(eb2)}*"))
    rows = truth_check(cal / f"{naming.uid_to_file(eb1)}.ms.split.cal", synth_delivery, "DATA", tmp_path)["rows"]
    noise = synth_delivery["truth"]["noise_jy_per_visibility_component"]
    assert {r["field"] for r in rows} == {"J1924-2914", "TW_Hya_synth"}
    for r in rows:
        assert abs(r["scale"] - 1) < 0.01 and abs(r["phase_deg"]) < 1.0 and r["resid_rms"] < 2 * noise, r


def test_a_wrapped_pipeline_exception_is_worded_by_what_it_says():
    # Seen with the pipeline engine on a partial run before it was refused: hifa_importdata's
    # PipelineException wraps a traceback and ends in a line holding only ')', which made the
    # error "pipeline task(s) failed: stage 1 hifa_importdata: )". Expected: the last line that
    # says something.
    from alma_regen.scriptforpi import _failure, gist
    wrapped = ("Traceback (most recent call last):\n  File \"importdata.py\", line 3, in prepare\n"
               "PipelineException(Failure executing job by an exception OSError with the following traceback\n"
               "    raise OSError(msg)\nOSError: Input data set 'uid___A002_X1_X2' not found\n)\n")
    assert gist(wrapped) == "OSError: Input data set 'uid___A002_X1_X2' not found"
    report = {"tasks": [{"task": "hifa_importdata", "stage": 1, "failed": True, "error": gist(wrapped)}],
              "error": wrapped}
    msg = str(_failure("scriptForPI.py", report, None))
    assert msg.endswith("the script stopped: OSError: Input data set 'uid___A002_X1_X2' not found") and ": )" not in msg
