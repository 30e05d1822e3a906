"""A pipeline CASA from a pipeline release (issue 9 item 1): the layer, its registration, a real run."""
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from alma_regen import cli
from alma_regen.casa import pipeline_layer
from alma_regen.casa.pipeline_layer import build_layer, layer_requirements
from alma_regen.casa.registry import REGISTRY_ENV, default_modular, load_registry
from alma_regen.casa.runner import CasaRunner
from alma_regen.errors import CasaError
from fixtures_pipeline import PIPELINE_LAYERS, PIPELINE_RELEASE

RELEASE = "2025.1.1.61"


def layer_of(launcher) -> Path:
    return Path(launcher.executable).parents[1]


def test_the_layer_holds_the_pipeline_and_its_deps_but_not_casa(pipeline_casa):
    layer = layer_of(pipeline_casa)
    assert (pipeline_casa.kind, pipeline_casa.pipeline) == ("modular", RELEASE)
    assert (layer / "src" / "pipeline" / "__init__.py").is_file()
    deps = layer / "deps"
    assert (deps / "numpy-2.3.5.dist-info").is_dir()
    assert [p.name for p in deps.glob("astropy-7.2.*.dist-info")]
    for name in ("casaplotms", "casarecipes", "recipes", "mako", "pubsub"):
        assert (deps / name).is_dir(), name
    for casa in ("casatools", "casatasks", "casaconfig", "casadata", "bdsf"):
        assert not list(deps.glob(f"{casa}*")), f"{casa} must not be in the layer"
    info = json.loads((layer / "layer.json").read_text())
    assert info["release"] == RELEASE and info["size_bytes"] > 0 and info["build_s"] > 0


def test_the_same_release_reuses_its_layer(pipeline_casa):
    casa = default_modular()
    again = build_layer(PIPELINE_RELEASE, PIPELINE_LAYERS, casa.executable, str(casa.version))
    assert not again.built and again.launcher == Path(pipeline_casa.executable)
    assert not list(PIPELINE_LAYERS.glob(".building-*")), "a finished build leaves no temporary folder"


def test_requirements_get_the_overrides(pipeline_casa):
    lines = (layer_of(pipeline_casa) / "src" / "requirements.txt").read_text().splitlines()
    reqs = layer_requirements(lines)
    assert "numpy==2.3.5" in reqs and "astropy==7.2.3" in reqs
    # The release's own astropy pin (7.1.0) is replaced, bdsf (VLASS only) left out.
    assert [r for r in reqs if r.startswith("astropy")] == ["astropy==7.2.3"]
    assert not [r for r in reqs if r.startswith("bdsf")]
    assert "mako==1.3.10" in reqs
    assert [r.split("==")[0] for r in reqs if r.startswith(("grpcio", "protobuf"))] == ["grpcio", "protobuf"]


def release_tarball(path: Path, extra_member: str):
    """A tiny release tarball (pipeline-src/pipeline/...) plus one more member."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in {"pipeline-src/pipeline/__init__.py": "",
                           "pipeline-src/pipeline/_version.py": "version = '2099.1.0.1'\n",
                           "pipeline-src/requirements.txt": "", extra_member: "x"}.items():
            data = text.encode()
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def test_an_unsafe_tarball_is_refused_and_leaves_nothing(tmp_path):
    bad = tmp_path / "evil.tar.gz"
    release_tarball(bad, "../outside.txt")
    layers = tmp_path / "layers"
    with pytest.raises(CasaError, match="cannot unpack the pipeline release"):
        build_layer(bad, layers, sys.executable, "6.7.0-31")
    assert not (tmp_path / "outside.txt").exists()
    assert list(layers.iterdir()) == [], "a failed build leaves no layer, not even a half-built one"


def test_not_a_release_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["casa-versions", "add-pipeline", str(tmp_path / "empty"), "--layers", str(tmp_path / "l"),
                     "--registry", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alma-regen casa-versions: error: ") and "not a pipeline release" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r.json").exists()


def test_cli_add_pipeline_registers_it_once(pipeline_casa, tmp_path, monkeypatch, capsys):
    reg = tmp_path / "casa.json"
    # An entry already there stays; a second add of the same release updates, not duplicates.
    reg.write_text(json.dumps({"installs": [{"kind": "modular", "executable": sys.executable,
                                             "version": "6.6.1-17"}]}))
    args = ["casa-versions", "add-pipeline", str(PIPELINE_RELEASE), "--layers", str(PIPELINE_LAYERS),
            "--registry", str(reg)]
    for _ in range(2):
        assert cli.main(args) == 0
        out = json.loads(capsys.readouterr().out)
    assert out["built"] is False and out["entry"] == {
        "kind": "modular", "executable": pipeline_casa.executable, "version": "6.7.0-31", "pipeline": RELEASE}
    assert [e.get("pipeline") for e in json.loads(reg.read_text())["installs"]] == [None, RELEASE]
    assert not list(tmp_path.glob(".casa.json.*")), "the atomic write leaves no temporary file"
    monkeypatch.setenv(REGISTRY_ENV, str(reg))
    assert cli.main(["casa-versions", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"version": "6.7.0-31", "kind": "modular", "pipeline": RELEASE,
            "executable": pipeline_casa.executable} in [{k: c[k] for k in ("version", "kind", "pipeline",
                                                                           "executable")} for c in listed]


def test_without_the_variable_the_registry_is_in_the_working_folder(pipeline_casa, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(REGISTRY_ENV, raising=False)
    monkeypatch.setenv("ALMA_REGEN_WORKDIR", str(tmp_path))
    assert cli.main(["casa-versions", "add-pipeline", str(PIPELINE_RELEASE), "--layers", str(PIPELINE_LAYERS)]) == 0
    assert json.loads(capsys.readouterr().out)["registry"] == str(tmp_path / "casa-registry.json")
    registry = load_registry()
    assert registry.find("6.7.0-31", needs_pipeline=True).executable == pipeline_casa.executable
    monkeypatch.setenv(REGISTRY_ENV, '{"installs": []}')
    with pytest.raises(CasaError, match="inline"):
        pipeline_layer.add_pipeline(PIPELINE_RELEASE, layers=PIPELINE_LAYERS)


PROBE = """\
import json, sys
import numpy, pipeline
from astropy.utils import data as astropy_data, iers
from recipes.almahelpers import fixsyscaltimes
json.dump({"pipeline": pipeline.__file__, "revision": pipeline.revision, "numpy": numpy.__version__,
           "astropy_offline": not (iers.conf.auto_download or astropy_data.conf.allow_internet),
           "hifa_restoredata": callable(globals().get("hifa_restoredata")),
           "fixsyscaltimes": callable(fixsyscaltimes), "args": sys.argv[-1:]}, open("probe.json", "w"))
"""


@pytest.mark.casa
def test_a_pipeline_run_through_the_registry(pipeline_env, pipeline_casa, tmp_path):
    """`python -m casashell --pipeline` from the registry's launcher: the real pipeline, its
    tasks in the shell namespace, the `recipes` of old restore scripts; the venv untouched."""
    casa = load_registry().resolve("6.7.0-31", needs_pipeline=True).launcher
    assert casa.executable == pipeline_casa.executable
    (tmp_path / "probe.py").write_text(PROBE)
    cmd = casa.command("probe.py", ["arg1"], pipeline=True)
    assert cmd[1:4] == ["-m", "casashell", "--pipeline"]
    CasaRunner().run(cmd, tmp_path, timeout=600)
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert Path(probe["pipeline"]).is_relative_to(layer_of(pipeline_casa))
    assert probe["revision"] == RELEASE and probe["numpy"] == "2.3.5"
    assert probe["hifa_restoredata"] and probe["fixsyscaltimes"] and probe["args"] == ["arg1"]
    # No IERS downloads from inside CASA: the layer's astropy.cfg is in force.
    assert probe["astropy_offline"]
    # The Airflow venv keeps its own numpy (the layer is on the child's path only).
    venv_numpy = subprocess.run([sys.executable, "-c", "import numpy; print(numpy.__version__)"],
                                capture_output=True, text=True, check=True,
                                env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}).stdout.strip()
    assert venv_numpy == "2.4.6"


def stand_in_xvfb(folder: Path, body: str) -> dict:
    """A PATH holding an `Xvfb` stand-in: Xvfb is not installed here, and what is checked
    is how the launcher starts it, hands its display over, and copes when it fails."""
    folder.mkdir()
    exe = folder / "Xvfb"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    return env | {"PATH": f"{folder}:{env['PATH']}"}


SHOW_DISPLAY = "import os; print(os.environ.get('DISPLAY'))"


def test_weblog_display_comes_from_a_private_xvfb_when_there_is_one(pipeline_casa, tmp_path):
    # Like Xvfb -displayfd 3: report the display once ready, then serve until killed.
    env = stand_in_xvfb(tmp_path / "bin", f'echo $$ > {tmp_path}/xvfb.pid\necho 42 >&3\nexec sleep 60\n')
    out = subprocess.run([pipeline_casa.executable, "-c", SHOW_DISPLAY, "--pipeline"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, ":42")
    pid = int((tmp_path / "xvfb.pid").read_text())
    with pytest.raises(ProcessLookupError):  # stopped after the run
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
    # Only --pipeline runs get one: our own scripts need no display.
    out = subprocess.run([pipeline_casa.executable, "-c", SHOW_DISPLAY], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "None"


def test_an_xvfb_that_does_not_start_never_fails_the_run(pipeline_casa, tmp_path):
    env = stand_in_xvfb(tmp_path / "bin", "echo 'Fatal server error' >&2\nexit 1\n")
    out = subprocess.run([pipeline_casa.executable, "-c", SHOW_DISPLAY + "; raise SystemExit(3)", "--pipeline"],
                         env=env, capture_output=True, text=True, timeout=60)
    # The run happened without a display, and its own exit status is what the caller sees.
    assert (out.returncode, out.stdout.strip()) == (3, "None")
