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
