"""Shared pytest fixtures: real servers and synthetic deliveries.

Fixture modules live beside this file and are loaded as pytest plugins
(`pytest_plugins`): each fixture is defined once, for every test. A test module
imports from them only helpers (functions, classes, constants), never a fixture:
a fixture imported into a test module would be a second definition of it, with
its own instances (a session fixture made again per module).
"""
import os

os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

pytest_plugins = [
    "fixtures_servers",           # seaweedfs, archive_server
    "fixtures_synth",             # synth_delivery, synth_delivery_3eb, member_copy
    "fixtures_airflow",           # alerting_airflow
    "fixtures_pipeline",          # pipeline_casa, pipeline_registry, pipeline_registry_file, pipeline_env
    "fixtures_pipeline_restore",  # pipeline_restored
    "fixtures_browser",           # demo_airflow, browser
    "imaging_fixtures",           # calibrated_member, native_imaged
    "fixtures_zoo",               # manual_delivery, pol_delivery, *_staged, manual_calibrated, manual_truth, native_pol
]


# The fast lane: `pytest -m "not casa and not services"` runs the tests of pure functions
# and files only, in seconds. A test is marked here by the fixtures it takes (a test that
# starts a server or Airflow itself carries the mark in its module).
SERVICE_FIXTURES = {"seaweedfs", "archive_server", "airflow_home", "alerting_airflow", "demo_airflow", "browser",
                    "operator_airflow", "manual_staged", "pol_staged",
                    "pipeline_casa", "pipeline_registry", "pipeline_registry_file", "pipeline_env"}
CASA_FIXTURES = {"synth_delivery", "synth_delivery_3eb", "member_copy", "calibrated_member", "native_imaged",
                 "pipeline_restored", "calibrated", "pol_delivery"}


def pytest_collection_modifyitems(config, items):
    import pytest
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & SERVICE_FIXTURES:
            item.add_marker(pytest.mark.services)
        if names & CASA_FIXTURES:
            item.add_marker(pytest.mark.casa)
