"""A DAG run's archive listing (staging/run_listing.py): asked once per run by the first step that
needs it, read by the run's later steps; another run, another source, a retry or an unreadable
file ask the archive again.

Against the real serve-archive (its record of every request counts the DataLink answers) and
SeaweedFS; the operators' pre_execute()/execute() with what a task's context carries (the run id,
the task instance's try number and map index). The whole DAG under real Airflow: test_dags.py.
"""
from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import archive_builder as ab
import pytest
from airflow_env import s3_conn

from alma_regen import naming
from alma_regen.member import Member
from alma_regen.staging import HttpSource, StageOptions, stage_mous
from alma_regen.staging.errors import NotFoundError
from alma_regen.staging.run_listing import forget, path_of, run_listing
from alma_regen.staging.stage import read_missing_ebs

EXTRA = ab.MISSING_EB  # in the PPR, not in the archive
RUN = "manual__2026-12-06T08:00:00+00:00"


@pytest.fixture
def archive(tmp_path):
    """Two EBs served, a third in the PPR the archive does not list (a partial run)."""
    return ab.build_partial_archive(tmp_path / "archive")


def datalinks(served) -> int:
    """DataLink answers serve-archive gave so far."""
    return sum(1 for h in served.stats()["headers"] if h[0].startswith("/datalink/sync"))


def context(run_id=RUN, try_number=1, map_index=-1):
    """What a task's context carries that the operators read here."""
    return {"run_id": run_id, "dag_run": SimpleNamespace(run_id=run_id, dag_id="alma_regenerate"),
            "ti": SimpleNamespace(try_number=try_number, map_index=map_index), "params": {}}


def test_one_listing_per_run_and_source(tmp_path, archive, archive_server):
    served = archive_server(archive.dir)
    work = tmp_path / "work"
    src = HttpSource(served.url)
    first = run_listing(src, archive.mous, work, RUN, by="lock_mous")
    assert datalinks(served) == 1
    kept = json.loads(path_of(work, archive.mous).read_text())
    assert (kept["run_id"], kept["source"], kept["mous"], kept["by"]) == (RUN, served.url, archive.mous, "lock_mous")
    # The run's later steps: the kept answer, the same files (URLs, sizes), no request.
    for _ in range(4):
        assert run_listing(HttpSource(served.url), archive.mous, work, RUN) == first
    assert datalinks(served) == 1
    # Another run asks again (and its answer replaces the first run's) ...
    run_listing(src, archive.mous, work, "other-run")
    assert datalinks(served) == 2 and json.loads(path_of(work, archive.mous).read_text())["run_id"] == "other-run"
    # ... a retry asks again, though its run's answer is kept ...
    run_listing(src, archive.mous, work, "other-run", fresh=True)
    assert datalinks(served) == 3
    # ... another source asks it (the same files served elsewhere) ...
    elsewhere = archive_server(archive.dir)
    run_listing(HttpSource(elsewhere.url), archive.mous, work, "other-run")
    assert datalinks(elsewhere) == 1 and datalinks(served) == 3
    # ... and a step with no run (by hand) asks, and keeps nothing.
    before = path_of(work, archive.mous).read_bytes()
    assert run_listing(src, archive.mous, work, None) == first
    assert datalinks(served) == 4 and path_of(work, archive.mous).read_bytes() == before
    # The teardown removes its own run's answer only.
    assert not forget(work, archive.mous, RUN) and path_of(work, archive.mous).exists()
    assert forget(work, archive.mous, "other-run") and not path_of(work, archive.mous).exists()


def test_unreadable_or_unkeepable_listings_are_asked_again_never_a_failure(tmp_path, archive, archive_server,
                                                                            caplog):
    served = archive_server(archive.dir)
    work = tmp_path / "work"
    src = HttpSource(served.url)
    good = run_listing(src, archive.mous, work, RUN)
    path = path_of(work, archive.mous)
    doc = json.loads(path.read_text())
    for broken in (b"", b"{not json", b"\xff\xfe", json.dumps(dict(doc, files=[dict(doc["files"][0], size="9")])),
                   json.dumps(dict(doc, files=[{"name": "x"}])), json.dumps(dict(doc, errors=5)), json.dumps([1])):
        path.write_bytes(broken if isinstance(broken, bytes) else broken.encode())
        asked = datalinks(served)
        with caplog.at_level(logging.WARNING, logger="alma_regen.staging"):
            caplog.clear()
            assert run_listing(src, archive.mous, work, RUN) == good
        assert datalinks(served) == asked + 1, broken
        assert any("asking the archive again" in r.getMessage() for r in caplog.records), broken
        assert json.loads(path.read_text())["files"] == doc["files"]  # kept again, whole
    # A listing that cannot be kept (.run-listings is a file here): a warning, the answer is used.
    path.unlink()
    path.parent.rmdir()
    path.parent.write_text("in the way")
    with caplog.at_level(logging.WARNING, logger="alma_regen.staging"):
        assert run_listing(src, archive.mous, work, RUN) == good
    assert any("could not keep the archive's listing" in r.getMessage() for r in caplog.records)
    path.parent.unlink()
    # A listing that does not sort into the MOUS's files is an error, as before, and is not kept:
    # the next step asks again.
    with pytest.raises(NotFoundError, match="NotFoundFault"):
        run_listing(src, "uid://A001/X9/X9", work, RUN)
    assert not path_of(work, "uid://A001/X9/X9").exists()


def test_a_run_s_steps_stage_against_one_listing_and_record_the_missing_ebs(tmp_path, archive, archive_server):
    """stage_auxiliary, inspect and each mapped stage_asdm of one run: one DataLink answer in all
    (each step asked it before); the EB the archive answered with an error row and the EB it does
    not list are recorded as staging from one fresh listing records them; a retry asks again."""
    from alma_regen.airflow.operators.inspection import InspectDeliveryOperator
    from alma_regen.airflow.operators.staging import StageAsdmOperator, StageAuxiliaryOperator
    served = archive_server(archive.dir)
    refused = archive.ebs[1]
    served.faults(rows={archive.asdm_name(refused): {"error_message": "NotFoundFault: not in the NGAS cluster"}})
    work = tmp_path / "work"
    fields = dict(mous_uid=archive.mous, workdir=str(work), source=served.url)

    aux = StageAuxiliaryOperator(task_id="stage_auxiliary", **fields)
    aux.pre_execute(context())
    ebs = aux.execute(context())
    assert ebs == [archive.ebs[0]] and datalinks(served) == 1
    plan = InspectDeliveryOperator(task_id="inspect", **fields).execute(context())
    assert set(plan["ebs"]) >= {archive.ebs[0], refused, EXTRA} and datalinks(served) == 1
    for i, eb in enumerate(ebs):
        op = StageAsdmOperator(task_id="stage_asdm", eb_uid=eb, **fields)
        op.pre_execute(context(map_index=i))
        assert op.execute(context(map_index=i))["status"] == "staged"
    assert datalinks(served) == 1, "one listing for the whole run's staging"
    member = Member.of(work, archive.mous)
    recorded = read_missing_ebs(member)
    # The same record as staging with a listing of its own (stage_mous, as `alma-regen run`).
    alone = stage_mous(archive.mous, HttpSource(served.url), tmp_path / "alone", StageOptions())
    assert recorded == read_missing_ebs(Member.of(tmp_path / "alone", archive.mous))
    assert sorted(alone["missing_ebs"]) == sorted(m["eb"] for m in recorded) == sorted([refused, EXTRA])
    assert "NotFoundFault: not in the NGAS cluster" in next(m["archive"] for m in recorded if m["eb"] == refused)
    assert ab.staged_member(member.root) == ab.staged_member(Member.of(tmp_path / "alone", archive.mous).root)

    # A retry of one EB's staging asks the archive again, and its answer serves the run from then on.
    asked = datalinks(served)
    retry = StageAsdmOperator(task_id="stage_asdm", eb_uid=ebs[0], **fields)
    retry.pre_execute(context(try_number=2, map_index=0))
    assert retry.execute(context(try_number=2, map_index=0))["status"] == "skipped"  # staged already
    assert datalinks(served) == asked + 1
    assert json.loads(path_of(work, archive.mous).read_text())["by"] == "stage_asdm[0]"
    # Another run of the MOUS asks again.
    StageAuxiliaryOperator(task_id="stage_auxiliary", **fields).pre_execute(context(run_id="next-run"))
    assert datalinks(served) == asked + 2


def test_the_run_listing_of_an_s3_mirror_keeps_its_etags(tmp_path, seaweedfs, monkeypatch):
    """From the S3 mirror: the kept listing carries each object's ETag (what its stamps and resumes
    check); the run's EBs are staged from it."""
    from alma_regen.airflow.operators.staging import StageAsdmOperator, StageAuxiliaryOperator
    arc = ab.build_archive(tmp_path / "archive", n_binaries=2, binary_size=20_000)
    bucket = seaweedfs.bucket("runlisting")
    ab.upload(arc, seaweedfs.client(), bucket, "mirror")
    monkeypatch.setenv("AIRFLOW_CONN_ALMA_ARCHIVE_S3", s3_conn(seaweedfs, f"s3://{bucket}/mirror"))
    work = tmp_path / "work"
    fields = dict(mous_uid=arc.mous, workdir=str(work), source="s3")
    aux = StageAuxiliaryOperator(task_id="stage_auxiliary", **fields)
    aux.pre_execute(context())
    ebs = aux.execute(context())
    kept = json.loads(path_of(work, arc.mous).read_text())
    assert kept["source"] == f"s3://{bucket}/mirror" and all(f["etag"] for f in kept["files"])
    for i, eb in enumerate(ebs):
        op = StageAsdmOperator(task_id="stage_asdm", eb_uid=eb, **fields)
        op.pre_execute(context(map_index=i))
        assert op.execute(context(map_index=i))["status"] == "staged"
        stamp = json.loads((Member.of(work, arc.mous).raw / f".{naming.uid_to_file(eb)}.asdm.sdm.staged.json")
                           .read_text())
        assert stamp["etag"] == next(f["etag"] for f in kept["files"] if f["name"] == arc.asdm_name(eb))
    assert ab.staged_member(Member.of(work, arc.mous).root) == ab.expected_member(arc)
