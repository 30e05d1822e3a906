"""Calibrated inputs for the imaging, fidelity and publishing tests.

Each EB of the shared synthetic delivery is restored once with the native
restore script (include/casa_scripts/restore_eb.py) into a copy of the member
folder laid out as scriptForPI leaves it: calibrated/working/<EB>.ms (with
CORRECTED_DATA) and <EB>.ms.split.cal (science spws, target, DATA =
calibrated), linked at calibrated/ level. The fixtures are session-scoped and
loaded once as a pytest plugin (tests/conftest.py), so every test module shares
one restore and one native imaging run; test modules import only the helpers
(fresh_member, build_calibrated).
"""
import json
import os
import shutil
from pathlib import Path

import pytest

from fixtures_synth import restore_by_script



def build_calibrated(synth: dict, member: Path, split: bool = True) -> Path:
    """Copy the synthetic member to `member` and restore every EB into member/calibrated/."""
    src = Path(synth["member_dir"])
    shutil.copytree(src, member, symlinks=True)
    work = member / "calibrated" / "working"
    work.mkdir(parents=True)
    for eb in synth["ebs"]:
        out = restore_by_script(synth, member, eb, work, split)
        os.symlink(f"working/{out.name}", member / "calibrated" / out.name)
    # Where alma_regen.calibration leaves its summary.
    (member / "calibrated" / "calibration.json").write_text(json.dumps({"engine": "test-restore", "ebs": synth["ebs"]}))
    return member


@pytest.fixture(scope="session")
def calibrated_member(synth_delivery, tmp_path_factory):
    """A member folder with calibrated/ as scriptForPI leaves it (split). Do not modify."""
    root = tmp_path_factory.mktemp("calibrated")
    return build_calibrated(synth_delivery, root / Path(synth_delivery["member_dir"]).name)


def fresh_member(calibrated: Path, dest: Path) -> Path:
    """A private copy of a calibrated member (the MSs linked, not copied: read-only use)."""
    member = dest / calibrated.name
    shutil.copytree(calibrated, member, symlinks=True,
                    ignore=lambda d, names: ["working", "imaging"] if Path(d) == calibrated / "calibrated"
                    or Path(d) == calibrated else [])
    os.symlink(calibrated / "calibrated" / "working", member / "calibrated" / "working")
    return member


@pytest.fixture(scope="session")
def native_imaged(calibrated_member, tmp_path_factory):
    """(member folder, imaging record) after one native imaging run, 2 workers."""
    from alma_regen import imaging
    member = fresh_member(calibrated_member, tmp_path_factory.mktemp("native"))
    return member, imaging.image(member, engine="native", workers=2)
