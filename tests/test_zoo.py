"""The delivery zoo (`alma-regen synth --style ...`, devtools/alma_regen_dev/zoo/).

The framework's contract first (no CASA): every style has a module or says in one line
that it is not built yet; options of cycle10 are refused for other styles.
"""
import importlib
import subprocess
import sys

import pytest

from alma_regen.errors import PermanentError
from alma_regen_dev import zoo

ALMA_REGEN = [sys.executable, "-m", "alma_regen.cli"]


def test_styles_are_the_issue_s_list():
    assert zoo.STYLES == ("cycle10", "cycle5", "cycle4", "manual", "polarisation", "single-dish")
    assert zoo.DEFAULT_STYLE == "cycle10"
    assert zoo.module_name("single-dish") == "alma_regen_dev.zoo.single_dish"


def test_an_unknown_style_is_refused_in_one_line(tmp_path):
    with pytest.raises(PermanentError, match="unknown delivery style 'cycle99'"):
        zoo.build("cycle99", tmp_path, ebs=1, seed=1)


def test_a_style_without_its_module_says_so(tmp_path, monkeypatch):
    """A style whose module is not there yet (another engineer's) is one clear line."""
    real = importlib.import_module

    def without_manual(name, *args):
        if name == "alma_regen_dev.zoo.manual":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_manual)
    with pytest.raises(PermanentError, match=r"style 'manual' is not built yet \(no module alma_regen_dev.zoo.manual\)"):
        zoo.build("manual", tmp_path, ebs=1, seed=1)


def test_cli_refuses_cycle10_options_for_other_styles(tmp_path):
    r = subprocess.run([*ALMA_REGEN, "synth", str(tmp_path), "--style", "cycle4", "--sessions", "1,1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "--sessions apply to --style cycle10 only, not cycle4" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())
