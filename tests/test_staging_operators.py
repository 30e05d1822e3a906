"""The staging hooks and operators, run with `execute()` against the real servers (as the amazon provider tests)."""
from __future__ import annotations

import json

import archive_builder as ab
import pytest
from airflow_env import s3_conn

from alma_regen.errors import PermanentError
from alma_regen.staging import member_path


@pytest.fixture
def archive(tmp_path):
    return ab.build_archive(tmp_path / "archive", n_binaries=2, binary_size=100_000)


def _run(source, workdir, mous):
    from alma_regen.airflow.operators.staging import StageAsdmOperator, StageAuxiliaryOperator
    aux = StageAuxiliaryOperator(task_id="stage_auxiliary", mous_uid=mous, workdir=str(workdir), source=source)
    ebs = aux.execute(context={})
    results = [StageAsdmOperator(task_id=f"stage_asdm_{i}", mous_uid=mous, eb_uid=eb, workdir=str(workdir),
                                 source=source).execute(context={}) for i, eb in enumerate(ebs)]
    return ebs, results


def test_operators_stage_from_the_request_handler_connection(tmp_path, archive, archive_server, monkeypatch):
    srv = archive_server(archive.dir)
    port = int(srv.url.rsplit(":", 1)[1])
    monkeypatch.setenv("AIRFLOW_CONN_ALMA_REQUEST_HANDLER", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http",
         "extra": {"cookie": "ALMA_SESSION=test", "timeout": 30}}))
    ebs, results = _run("request_handler", tmp_path / "work", archive.mous)
    assert sorted(ebs) == sorted(archive.ebs)
    assert {r["status"] for r in results} == {"staged"}
    assert ab.staged_member(member_path(tmp_path / "work", archive.mous)) == ab.expected_member(archive)


def test_operators_stage_from_the_s3_connection(tmp_path, archive, seaweedfs, monkeypatch):
    bucket = seaweedfs.bucket("opmirror")
    ab.upload(archive, seaweedfs.client(), bucket, "mirror")
    monkeypatch.setenv("AIRFLOW_CONN_ALMA_ARCHIVE_S3", s3_conn(seaweedfs, f"s3://{bucket}/mirror"))
    ebs, results = _run("s3", tmp_path / "work", archive.mous)
    assert len(results) == len(archive.ebs)
    assert ab.staged_member(member_path(tmp_path / "work", archive.mous)) == ab.expected_member(archive)


def test_hook_builds_the_source_from_the_connection(monkeypatch):
    from alma_regen.airflow.hooks.archive import AlmaRequestHandlerHook
    monkeypatch.setenv("AIRFLOW_CONN_ALMA_REQUEST_HANDLER", json.dumps(
        {"conn_type": "http", "host": "almascience.example.org", "schema": "https", "login": "pi",
         "password": "secret-password", "extra": {"cookie": "SESSION=abc"}}))
    src = AlmaRequestHandlerHook().get_source()
    assert src.root == "https://almascience.example.org"
    assert src._auth_header.startswith("Basic ") and src._headers["Cookie"] == "SESSION=abc"


def test_operator_template_fields_and_permanent_errors(tmp_path, archive, archive_server):
    from alma_regen.airflow.operators.staging import StageAsdmOperator, StageAuxiliaryOperator
    assert set(StageAuxiliaryOperator.template_fields) == {"mous_uid", "workdir", "source", "require_all_ebs"}
    # The run's require_all_ebs param arrives rendered ("True"/"False") and reaches staging as a bool.
    for rendered, wanted in (("True", True), ("False", False)):
        strict = StageAuxiliaryOperator(task_id=f"aux_{rendered}", mous_uid="uid://A001/X9/X9", workdir=str(tmp_path),
                                        source="s3://b/p", require_all_ebs=rendered)
        assert strict._options().require_all_ebs is wanted
    assert "eb_uid" in StageAsdmOperator.template_fields
    srv = archive_server(archive.dir)
    op = StageAuxiliaryOperator(task_id="aux", mous_uid="uid://A001/X9/X9", workdir=str(tmp_path), source=srv.url)
    with pytest.raises(PermanentError, match="NotFoundFault"):
        op.execute(context={})
