"""The synthetic delivery's stand-in scriptForPI decides as the real v2.5 does, where tests rely on it.

Real v2.5 (read through the code search, scriptForPI.py,v 2.5 2023/10/03):
- "imaging pipeline used" (no split without DOSPLIT) counts as its shell commands count:
  `grep hif_makeimages <PPR> | wc -l` > 1 (lines, not occurrences), `ls ../product/*_sci.spw*.fits`
  finds one, and `cat *scriptForImaging.py | grep -v "#" | wc -l` is 0 (a blank line counts);
- the split's mstransform reindexes only when the science spw lists of the EBs it splits differ.
The stand-in (alma_regen_dev.synth.SCRIPT_FOR_PI) is checked here against those rules and against
our delivery model (Delivery.imaging_pipeline_used), on the same files. Its functions are loaded
from its text without running it (it imports CASA only where it splits).
"""
from __future__ import annotations

import pytest

from alma_regen.delivery import Delivery
from alma_regen_dev.synth import SCRIPT_FOR_PI

MOUS_F = "uid___A001_X1_X2"
ENTRY = "\nhome = os.getcwd()\n"


@pytest.fixture(scope="module")
def standin() -> dict:
    assert SCRIPT_FOR_PI.count(ENTRY) == 1
    ns: dict = {}
    exec(compile(SCRIPT_FOR_PI.split(ENTRY)[0], "scriptForPI.py (stand-in)", "exec"), ns)
    return ns


def imaged_member(tmp_path, ppr_lines, fits=1, imaging="# made by the pipeline\n"):
    m = tmp_path / f"member.{MOUS_F}"
    (m / "script").mkdir(parents=True)
    (m / "product").mkdir()
    (m / "script" / f"PPR_{MOUS_F}.xml").write_text(
        "<SciPipeRequest><ProcessingRequests>\n" + "".join(line + "\n" for line in ppr_lines)
        + "<AsdmDiskName>uid___A002_X1_X3</AsdmDiskName>\n</ProcessingRequests></SciPipeRequest>\n")
    (m / "script" / f"member.{MOUS_F}.hifa_calimage.casa_piperestorescript.py").write_text("h_init()\n")
    (m / "script" / f"member.{MOUS_F}.scriptForImaging.py").write_text(imaging)
    for i in range(fits):
        (m / "product" / f"member.{MOUS_F}.T_sci.spw{25 + 2 * i}.cube.I.pbcor.fits").write_bytes(b"SIMPLE")
    return m


STEP = "<ProcessingProcedure><RecipeName>hif_makeimages</RecipeName></ProcessingProcedure>"


@pytest.mark.parametrize("case, ppr_lines, kw, used", [
    ("pipeline imaged", [STEP, STEP], {}, True),
    # Two hif_makeimages on ONE line are one line to `grep | wc -l`: not "more than one".
    ("two on one line", [STEP + STEP], {}, False),
    ("one line", [STEP], {}, False),
    ("no science image", [STEP, STEP], {"fits": 0}, False),
    ("code in scriptForImaging", [STEP, STEP], {"imaging": "tclean(vis='x')\n"}, False),
    # A blank line has no '#': `grep -v "#" | wc -l` counts it, so the imaging was not the pipeline's alone.
    ("a blank line", [STEP, STEP], {"imaging": "# made by the pipeline\n\n# nothing to run\n"}, False),
    # Code with a comment on its line contains '#': not counted.
    ("code with a comment", [STEP, STEP], {"imaging": "tclean(vis='x')  # by hand\n"}, True),
])
def test_the_imaging_pipeline_rule_is_v2_5_s(standin, tmp_path, monkeypatch, case, ppr_lines, kw, used):
    m = imaged_member(tmp_path, ppr_lines, **kw)
    assert Delivery(m).imaging_pipeline_used()["used"] is used, case
    monkeypatch.chdir(m / "script")   # where scriptForPI runs
    assert standin["_imaging_pipeline_only"](f"PPR_{MOUS_F}.xml") is used, case
    assert standin["_imaging_pipeline_only"](None) is False


@pytest.mark.parametrize("spws, reindex", [
    ({"eb1": [0, 1], "eb2": [0, 1]}, False),    # the same science spws: the original ids kept
    ({"eb1": [17, 19], "eb2": [25, 27]}, True),  # they differ: renumbered from 0 (v2.5)
    ({"eb1": [0, 1]}, False),
    ({}, False),
])
def test_the_split_reindexes_only_when_the_science_spws_differ(standin, spws, reindex):
    assert standin["needs_reindex"](spws) is reindex
