"""The real ALMA pipeline as a pipeline CASA, for the tests (issue 9).

`pipeline_casa` builds the pipeline layer (alma_regen.casa.pipeline_layer, the
code `alma-regen casa-versions add-pipeline` runs) from the release in
../shared/alma-pipeline on the modular CASA of this venv, and returns its
CasaLauncher. The layer is cached by content outside the test session
(~/.cache/alma-regen/pipeline-layers, or $ALMA_REGEN_TEST_LAYERS), so pip runs
once per release, not once per session; a later session only hashes the tarball.

- `pipeline_casa`      the CasaLauncher (modular, pipeline=<release>)
- `pipeline_registry`  a CasaRegistry with it and the default modular CASA
- `pipeline_registry_file`  a registry file listing it (written as the CLI writes one)
- `pipeline_env`       sets ALMA_REGEN_CASA_REGISTRY to that file for this test (and its children)

Without the release the tests that use them skip, saying why; under CI=true
its absence fails them. $ALMA_REGEN_TEST_PIPELINE names another release.
"""
import os
from pathlib import Path

import pytest

from needs import skip_or_fail

from alma_regen.casa.pipeline_layer import build_layer
from alma_regen.casa.registry import (
    REGISTRY_ENV, CasaLauncher, CasaRegistry, CasaVersion, default_modular, save_entry,
)

REPO = Path(__file__).resolve().parents[1]
PIPELINE_RELEASE = Path(os.environ.get(
    "ALMA_REGEN_TEST_PIPELINE", REPO.parent / "shared" / "alma-pipeline" / "alma-pipeline-2025.1.1.61.tar.gz"))
PIPELINE_LAYERS = Path(os.environ.get(
    "ALMA_REGEN_TEST_LAYERS", Path.home() / ".cache" / "alma-regen" / "pipeline-layers"))


@pytest.fixture(scope="session")
def pipeline_casa() -> CasaLauncher:
    if not PIPELINE_RELEASE.exists():
        skip_or_fail(f"no ALMA pipeline release at {PIPELINE_RELEASE} (set ALMA_REGEN_TEST_PIPELINE)")
    casa = default_modular()
    if casa is None:
        skip_or_fail("no modular CASA in this Python: a pipeline layer needs one")
    layer = build_layer(PIPELINE_RELEASE, PIPELINE_LAYERS, casa.executable, str(casa.version))
    return CasaLauncher(CasaVersion.parse(layer.casa_version), "modular", str(layer.launcher), layer.release,
                        "tests/fixtures_pipeline.py")


@pytest.fixture(scope="session")
def pipeline_registry(pipeline_casa) -> CasaRegistry:
    return CasaRegistry([pipeline_casa, default_modular()])


@pytest.fixture(scope="session")
def pipeline_registry_file(pipeline_casa, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("casa-registry") / "casa-registry.json"
    save_entry(path, {"kind": "modular", "executable": pipeline_casa.executable,
                      "version": str(pipeline_casa.version), "pipeline": pipeline_casa.pipeline},
               lambda e: False)
    return path


@pytest.fixture
def pipeline_env(pipeline_registry_file, monkeypatch) -> Path:
    """ALMA_REGEN_CASA_REGISTRY -> the pipeline registry file, for this test: load_registry()
    here and every child process started from here (CLI, Airflow) see the pipeline CASA."""
    monkeypatch.setenv(REGISTRY_ENV, str(pipeline_registry_file))
    return pipeline_registry_file
