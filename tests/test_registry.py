"""The CASA registry: versions, configuration, resolution rules, launch commands."""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alma_regen import cli
from alma_regen.casa.registry import (
    REGISTRY_ENV, CasaLauncher, CasaRegistry, CasaVersion, load_registry, parse_config, registry_file, save_entry,
)
from alma_regen.casa.runner import CasaRunner
from alma_regen.errors import CasaError

PIPELINE_2023 = "2023.1.0.124"


@pytest.mark.parametrize("text", ["6.5.4-9", "6.5.4.9", "CASA 6.5.4-9", "CASA version used for reduction: 6.5.4-9.",
                                  "casa-6.5.4-9-pipeline-2023.1.0.124-py3.8.el8"])
def test_version_notations(text):
    assert str(CasaVersion.parse(text)) == "6.5.4-9"


def test_versions_compare_numerically():
    v = CasaVersion.parse
    assert v("6.10.0-1") > v("6.9.9-99")
    assert v("6.5.4-10") > v("6.5.4-9")
    assert v("6.5.4.9") == v("6.5.4-9")
    assert v("6.5.4").matches(v("6.5.4-9")) and not v("6.5.4-8").matches(v("6.5.4-9"))
    with pytest.raises(CasaError, match="not a CASA version"):
        v("pipeline 2023")


def fake_casa(tmp_path, name="casa-6.5.4-9-pipeline-2023.1.0.124-py3.8.el8") -> Path:
    """A stand-in for a monolithic CASA: monolithic CASA cannot be installed here, and
    what is checked is the command line we give it. It records its argv and cwd."""
    exe = tmp_path / name / "bin" / "casa"
    exe.parent.mkdir(parents=True)
    exe.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$PWD/argv.txt"\necho "CASA stand-in ran"\n')
    exe.chmod(0o755)
    return exe


def launcher(version, kind="casa", pipeline=None):
    return CasaLauncher(CasaVersion.parse(version), kind, f"/opt/{version}/bin/casa", pipeline)


def test_default_modular_casa_from_package_metadata_without_importing_casa():
    code = ("import sys; from alma_regen.casa.registry import load_registry; r = load_registry(config=''); "
            "print(r.modular().as_dict()['version'], r.modular().executable, 'casatools' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[2])}).stdout.split()
    assert out == ["6.7.0-31", os.path.normpath(sys.executable), "False"]


def test_config_file_with_a_monolithic_pipeline_casa(tmp_path, monkeypatch):
    exe = fake_casa(tmp_path)
    cfg = tmp_path / "casa.json"
    cfg.write_text(json.dumps({"installs": [{"kind": "casa", "executable": str(exe)}]}))
    monkeypatch.setenv(REGISTRY_ENV, str(cfg))
    reg = load_registry()
    casa = reg.find("6.5.4-9")
    # version and pipeline come from the tarball's folder name
    assert (casa.kind, casa.pipeline, casa.has_pipeline) == ("casa", PIPELINE_2023, True)
    assert [str(c.version) for c in reg.launchers] == ["6.7.0-31", "6.5.4-9"]  # the default modular too


def test_inline_json_and_bad_configs(tmp_path):
    exe = fake_casa(tmp_path, "casa-6.6.1-17")
    reg = load_registry(json.dumps([{"kind": "casa", "executable": str(exe)}]), include_default=False)
    assert reg.launchers[0].describe() == f"6.6.1-17 (monolithic, no pipeline: {exe})"
    bad = {
        "{not json": "not valid JSON",
        '{"installs": {}}': "expected",
        json.dumps([{"kind": "docker", "executable": str(exe)}]): "kind must be one of",
        json.dumps([{"kind": "casa", "executable": "/nowhere/casa", "version": "6.5.4-9"}]): "does not exist",
        json.dumps([{"kind": "modular", "executable": sys.executable}]): "no version given",
        json.dumps([{"kind": "casa", "executable": str(exe), "path": "x"}]): "unknown key",
    }
    for text, why in bad.items():
        with pytest.raises(CasaError, match=why):
            parse_config(text)
    with pytest.raises(CasaError, match="cannot read the CASA registry"):
        load_registry(str(tmp_path / "missing.json"))


def test_a_modular_casa_with_a_pipeline_layer(tmp_path):
    """A pipeline release layered on a modular CASA (casa-versions add-pipeline) is a pipeline CASA."""
    reg = load_registry(json.dumps([{"kind": "modular", "executable": sys.executable, "version": "6.7.0-31",
                                     "pipeline": "2025.1.1.61"}]), include_default=False)
    casa = reg.find("6.7.0-31", needs_pipeline=True)
    assert (casa.kind, casa.pipeline, casa.has_pipeline) == ("modular", "2025.1.1.61", True)
    assert casa.describe() == f"6.7.0-31 (pipeline 2025.1.1.61, modular: {sys.executable})"
    assert casa.command("s.py", ["a"], pipeline=True) == [
        sys.executable, "-m", "casashell", "--pipeline", "--nologger", "--log2term", "--nogui", "--agg",
        "-c", "s.py", "a"]
    # Without --pipeline it is a plain modular CASA: our own scripts run there too.
    assert casa.command("s.py", shell=False) == [sys.executable, "s.py"]
    r = reg.resolve("6.5.4-9", needs_pipeline=True)
    assert r.launcher == casa and "newest pipeline CASA" in r.reason


def test_save_entry_is_atomic_and_keeps_what_it_does_not_replace(tmp_path):
    path = tmp_path / "reg" / "casa.json"
    old = {"kind": "modular", "executable": sys.executable, "version": "6.6.1-17"}
    new = {"kind": "modular", "executable": sys.executable, "version": "6.7.0-31", "pipeline": "2025.1.1.61"}
    save_entry(path, old, lambda e: False)
    save_entry(path, new, lambda e: False)
    save_entry(path, new, lambda e: e.get("pipeline") == "2025.1.1.61")
    assert json.loads(path.read_text()) == {"installs": [old, new]}
    assert [p.name for p in path.parent.iterdir()] == ["casa.json"]
    with pytest.raises(CasaError, match="does not exist"):
        save_entry(path, {**new, "executable": "/nowhere/python"}, lambda e: False)
    path.write_text("{broken")
    with pytest.raises(CasaError, match="not valid JSON"):
        save_entry(path, new, lambda e: False)
    assert path.read_text() == "{broken", "a broken registry is reported, never overwritten"


def test_the_registry_file_defaults_to_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(REGISTRY_ENV, raising=False)
    monkeypatch.setenv("ALMA_REGEN_WORKDIR", str(tmp_path))
    assert registry_file() == tmp_path / "casa-registry.json"
    assert [c.source for c in load_registry().launchers] == ["default"]  # no file yet: the default only
    save_entry(registry_file(), {"kind": "modular", "executable": sys.executable, "version": "6.6.1-17"},
               lambda e: False)
    assert [str(c.version) for c in load_registry().launchers] == ["6.7.0-31", "6.6.1-17"]
    monkeypatch.setenv(REGISTRY_ENV, str(tmp_path / "elsewhere.json"))
    assert registry_file() == tmp_path / "elsewhere.json"


@pytest.fixture
def site():
    """Three CASAs: an older pipeline one, a newer pipeline one, and a modular one."""
    return CasaRegistry([
        launcher("6.5.4-9", pipeline=PIPELINE_2023),
        launcher("6.6.1-17", pipeline="2024.1.0.8"),
        launcher("6.7.0-31", kind="modular"),
    ])


def test_manual_calibration_needs_the_exact_version(site):
    r = site.resolve("6.5.4-9", manual=True)
    assert str(r.launcher.version) == "6.5.4-9" and "exact version" in r.reason
    with pytest.raises(CasaError) as exc:
        site.resolve("CASA 5.4.0-70", manual=True)
    msg = str(exc.value)
    assert "5.4.0-70 is not installed" in msg and "exact version" in msg
    for v in ("6.7.0-31", "6.6.1-17", "6.5.4-9"):
        assert v in msg
    with pytest.raises(CasaError, match="does not record one"):
        site.resolve(None, manual=True)


def test_pipeline_data_use_that_version_or_the_newest_pipeline_casa(site):
    r = site.resolve("6.5.4-9", needs_pipeline=True)
    assert str(r.launcher.version) == "6.5.4-9" and "recorded in the delivery" in r.reason
    # 6.6.0 is not installed: the newest pipeline CASA takes over, and says so.
    r = site.resolve("6.6.0-20", needs_pipeline=True)
    assert str(r.launcher.version) == "6.6.1-17" and r.launcher.has_pipeline
    assert "6.6.0-20 is not installed" in r.reason and "newest pipeline CASA" in r.reason
    assert r.as_dict()["requested"] == "6.6.0-20"
    # The modular 6.7.0 has no pipeline: a pipeline step cannot use it even if asked by version.
    with pytest.raises(CasaError, match="6.7.0-31 with the ALMA pipeline"):
        site.resolve("6.7.0-31", needs_pipeline=True, manual=True)


def test_an_older_pipeline_is_never_picked_for_newer_data(site):
    with pytest.raises(CasaError, match=r"CASA 6.8.0-1 with the ALMA pipeline is not installed.*installed: 6.7.0-31"):
        site.resolve("6.8.0-1", needs_pipeline=True)


def test_no_pipeline_casa_installed_names_what_is(tmp_path):
    reg = load_registry(config="")
    with pytest.raises(CasaError) as exc:
        reg.resolve("6.5.4-9", needs_pipeline=True)
    assert f"installed: 6.7.0-31 (modular: {os.path.normpath(sys.executable)})" in str(exc.value)


def test_override_wins_and_must_be_installed(site):
    r = site.resolve("6.5.4-9", manual=True, override="6.7.0.31")
    assert str(r.launcher.version) == "6.7.0-31" and "override" in r.reason
    with pytest.raises(CasaError, match=r"CASA 6.4.1-12 \(override\) is not installed; installed: "):
        site.resolve("6.5.4-9", override="6.4.1-12")


def test_monolithic_command_line_reaches_the_casa_executable(tmp_path):
    """Runs the fake `casa` (see fake_casa) through the runner: the argv it receives is the contract."""
    casa = load_registry(json.dumps([{"kind": "casa", "executable": str(fake_casa(tmp_path))}]),
                         include_default=False).find("6.5.4-9")
    work = tmp_path / "script"
    work.mkdir()
    CasaRunner().run(casa.command("scriptForPI.py", ["--flag"], pipeline=True), work)
    assert (work / "argv.txt").read_text().split() == [
        "--pipeline", "--nologger", "--log2term", "--nogui", "--agg", "-c", "scriptForPI.py", "--flag"]
    assert casa.command("x.py") == [str(casa.executable), "--nologger", "--log2term", "--nogui", "--agg", "-c", "x.py"]


def test_pipeline_flag_needs_a_pipeline_casa():
    with pytest.raises(CasaError, match="has no ALMA pipeline"):
        launcher("6.7.0-31", kind="modular").command("x.py", pipeline=True)
    with pytest.raises(CasaError, match="has no ALMA pipeline"):
        launcher("6.6.1-17").command("x.py", pipeline=True)


def test_modular_commands(tmp_path):
    casa = load_registry(config="").modular()
    assert casa.command("s.py", ["a"], shell=False) == [casa.executable, "s.py", "a"]
    assert casa.command("s.py", ["a"]) == [casa.executable, "-m", "casashell", "--nologger", "--log2term", "--nogui",
                                           "--agg", "-c", "s.py", "a"]


@pytest.mark.casa
def test_casashell_launch_gives_the_script_casa_tasks_and_its_args(tmp_path, caplog):
    """`python -m casashell -c` is how delivery scripts run on modular CASA: tasks are globals."""
    (tmp_path / "s.py").write_text("import sys\nprint('SHELL', callable(applycal), sys.argv[1:])\n"
                                   "casalog.post('an INFO line of the CASA log')\n")
    casa = load_registry(config="").modular()
    with caplog.at_level(logging.INFO, logger="alma_regen.casa.runner"):
        CasaRunner().run(casa.command("s.py", ["x", "y"]), tmp_path)
    assert "SHELL True ['x', 'y']" in caplog.messages
    # --log2term: the CASA log itself, INFO lines included, reaches the task log.
    assert any(m.endswith("INFO\t::casa\tan INFO line of the CASA log") for m in caplog.messages)


def test_cli_casa_versions(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "casa.json"
    cfg.write_text(json.dumps([{"kind": "casa", "executable": str(fake_casa(tmp_path))}]))
    monkeypatch.setenv(REGISTRY_ENV, str(cfg))
    assert cli.main(["casa-versions", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(c["version"], c["kind"], c["pipeline"]) for c in listed] == [
        ("6.7.0-31", "modular", None), ("6.5.4-9", "casa", PIPELINE_2023)]
    assert cli.main(["casa-versions"]) == 0
    assert "6.5.4-9" in capsys.readouterr().out
    monkeypatch.setenv(REGISTRY_ENV, str(tmp_path / "missing.json"))
    assert cli.main(["casa-versions"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alma-regen casa-versions: error: cannot read the CASA registry") and "Traceback" not in err
