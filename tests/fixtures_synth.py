"""Fixtures that build synthetic ALMA deliveries with real CASA.

A 2-EB delivery is made once per test session (about 20 s of CPU) and
shared; tests that modify a delivery copy its member folder first
(`member_copy`). A 3-EB, 2-session delivery (`synth_delivery_3eb`, about
25 s of CPU) is made only for the tests that ask for it.
"""
import json
import shutil
import sys
from pathlib import Path

import pytest

from alma_regen.casa.runner import CasaRunner
from alma_regen_dev.synth import synthesize

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def synth_delivery(tmp_path_factory):
    """The result JSON of `alma-regen synth OUT --ebs 2 --seed 1`."""
    out = tmp_path_factory.mktemp("synth")
    return synthesize(out, ebs=2, seed=1)


@pytest.fixture(scope="session")
def synth_delivery_3eb(tmp_path_factory):
    """`alma-regen synth OUT --ebs 3 --seed 3`: the default 3-EB layout, two
    sessions (session_1: EB1, EB2; session_3: EB3), about 25 s."""
    out = tmp_path_factory.mktemp("synth3")
    return synthesize(out, ebs=3, seed=3)


@pytest.fixture
def member_copy(synth_delivery, tmp_path):
    """A private copy of the synthetic member folder, safe to modify."""
    src = Path(synth_delivery["member_dir"])
    dst = tmp_path / src.name
    shutil.copytree(src, dst, symlinks=True)
    return dst


def run_casa_python(script, *args, cwd):
    """Run a CASA-side script (tests/casa/ or include/casa_scripts/) in a child."""
    return CasaRunner().run([sys.executable, str(script), *map(str, args)], cwd=cwd)


def restore_by_script(synth, member, eb, work, split: bool):
    """Restore one EB with include/casa_scripts/restore_eb.py directly (no
    alma_regen.calibration), the delivered files named by hand."""
    from alma_regen import naming
    from alma_regen.paths import casa_script
    member, work = Path(member), Path(work)
    f = naming.uid_to_file(eb)
    mous_f = naming.uid_to_file(synth["mous_uid"])
    job = {
        "eb": f, "asdm": str(member / "raw" / naming.asdm_dir(eb)), "workdir": str(work),
        "calapply": str(member / "calibration" / f"{f}.ms.calapply.txt"),
        "flagversions": str(member / "calibration" / f"{f}.ms.flagversions.tgz"),
        "caltables": str(member / "calibration" / f"{mous_f}.{session_of(synth, eb)}.caltables.tgz"),
        "split": split,
    }
    (work / f"{f}.job.json").write_text(json.dumps(job))
    run_casa_python(casa_script("restore_eb.py"), f"{f}.job.json", f"{f}.result.json", cwd=work)
    return work / (f"{f}.ms.split.cal" if split else f"{f}.ms")


def session_of(synth, eb):
    return next(name for name, ebs in synth["sessions"].items() if eb in ebs)


def truth_check(vis, synth, column, workdir):
    """Per field and spw: scale, phase and residual of `column` against the true model."""
    eb = Path(vis).name.split(".")[0]
    truth = Path(workdir) / "truth.json"
    truth.write_text(json.dumps(synth["truth"]))
    result = Path(workdir) / f"check.{eb}.{column}.json"
    model = Path(synth["truth"]["model_dir"]) / f"{eb}.model.npz"
    run_casa_python(TESTS / "casa" / "truth_check.py", vis, model, truth, column, result, cwd=workdir)
    return json.loads(result.read_text())
