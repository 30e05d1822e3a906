"""Shared pytest fixtures: real servers and synthetic deliveries.

Fixture modules live beside this file; importing them here makes their
fixtures visible to every test.
"""
import os

os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from fixtures_servers import *  # noqa: E402,F401,F403
from fixtures_synth import *  # noqa: E402,F401,F403
from fixtures_airflow import *  # noqa: E402,F401,F403
from fixtures_pipeline import *  # noqa: E402,F401,F403
from fixtures_browser import *  # noqa: E402,F401,F403


# The fast lane: `pytest -m "not casa and not services"` runs the tests of pure functions
# and files only, in seconds. A test is marked here by the fixtures it takes (a test that
# starts a server or Airflow itself carries the mark in its module).
SERVICE_FIXTURES = {"seaweedfs", "archive_server", "airflow_home", "alerting_airflow", "demo_airflow", "browser",
                    "operator_airflow",
                    "pipeline_casa", "pipeline_registry", "pipeline_registry_file", "pipeline_env"}
CASA_FIXTURES = {"synth_delivery", "synth_delivery_3eb", "member_copy", "calibrated_member", "native_imaged",
                 "pipeline_restored", "calibrated"}


def pytest_collection_modifyitems(config, items):
    import pytest
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & SERVICE_FIXTURES:
            item.add_marker(pytest.mark.services)
        if names & CASA_FIXTURES:
            item.add_marker(pytest.mark.casa)
