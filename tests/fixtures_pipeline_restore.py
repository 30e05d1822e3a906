"""The REAL pipeline's hifa_restoredata on the synthetic delivery, once per session.

`pipeline_restored` runs the delivery's own restore script
(script/*casa_piperestorescript.py) under a pipeline CASA, in a folder laid out
as scriptForPI lays it out before it calls the restore script (the same
alma_regen.calibration.prepare_layout the native engine uses):

    calibrated/rawdata/<EB>  -> ../../raw/<EB>.asdm.sdm
    calibrated/products      -> ../calibration
    calibrated/working/      the cwd; hifa_restoredata copies the manifest and the
                             calibration files from ../products into ../rawdata
                             and reads them there

and returns the working folder, where the restored <EB>.ms are. The native
restore is compared with these (tests/test_restore_vs_pipeline.py, bench/restore.py).
`pipeline_registry` (a registry holding a pipeline CASA) is the shared fixture of
tests/fixtures_pipeline.py.
"""
import shutil
from pathlib import Path

import pytest

from alma_regen import calibration
from alma_regen.casa.runner import CasaRunner
from alma_regen.delivery import Delivery


def pipeline_launcher(registry):
    """The first pipeline CASA of a registry whose executable is present, or None."""
    return next((c for c in registry.launchers if c.has_pipeline and Path(c.executable).exists()), None)


def real_restore(member, launcher, runner=None, timeout=None) -> Path:
    """Lay out calibrated/ as scriptForPI does and run the delivery's restore script
    with the real pipeline; returns calibrated/working."""
    member = Path(member)
    script = Delivery(member).script("restore")
    if script is None:
        raise FileNotFoundError(f"{member}/script has no *casa_piperestorescript.py")
    work = calibration.prepare_layout(member, Delivery(member).ppr_ebs()) / "working"
    runner = runner or CasaRunner()
    # A pipeline run is judged by its results (the restored MSs), not by the
    # tracebacks its weblog prints; a non-zero exit still fails.
    runner.run(launcher.command(script.resolve(), pipeline=True), cwd=work, timeout=timeout,
               label="hifa_restoredata (real pipeline)", strict=False)
    return work


@pytest.fixture(scope="session")
def pipeline_restored(synth_delivery_3eb, pipeline_registry, tmp_path_factory):
    """calibrated/working of the real hifa_restoredata on a copy of the 3-EB, 2-session synthetic delivery."""
    src = Path(synth_delivery_3eb["member_dir"])
    member = tmp_path_factory.mktemp("pipeline-restore") / src.name
    shutil.copytree(src, member, symlinks=True)
    return real_restore(member, pipeline_launcher(pipeline_registry))
