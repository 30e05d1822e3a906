"""Style cycle5: a Cycle 5 (2017) pipeline delivery, with real CASA data.

What differs from today's (cycle10): the project is a 2017.1 one; the README and the QA2
report (qa/, HTML) carry the old `CASA version: 5.1.1-5, Pipeline: 40896 (Pipeline-CASA51-P2-B)`
line, and the pipeline manifest records the same versions; the restore script is the pre-2021
template (`from recipes.almahelpers import fixsyscaltimes`, `__rethrow_casa_exceptions`); the
scriptForPI states its version as the real ones do (`$Id: scriptForPI.py,v 1.23 ...`, the
version of October 2017, when Cycle 5 began), so its rules decide and the scriptforpi engine
refuses it on CASA 6 (v1.25 and older are Python 2). The archive has the auxiliary tar already
(Cycle 5 on). The data are synthesize()'s, calibrated in
today's pipeline formats: a CASA 5 pipeline is not available here, so `auto` restores natively
on modular CASA and says the recorded CASA is not installed.
"""
from .. import synth
from . import repack

CASA = "5.1.1-5"
PIPELINE = "40896 (Pipeline-CASA51-P2-B)"
VERSION_LINE = f"CASA version: {CASA}, Pipeline: {PIPELINE}"
SCRIPTFORPI_ID = "# $Id: scriptForPI.py,v 1.23 2017/10/17 (alma-regen synth --style cycle5) $\n"


def project_of(seed: int) -> str:
    return f"2017.1.{seed % 100000:05d}.S"


def edit(spec, member) -> None:
    mous_f = spec["mous_file"]
    repack.write_ppr(spec, member)
    repack.write_restore_script(spec, member, "old")
    sfpi = member / "script" / f"member.{mous_f}.scriptForPI.py"
    sfpi.write_text(SCRIPTFORPI_ID + sfpi.read_text())
    (member / synth.naming.readme_name(spec["mous"])).write_text(
        f"ALMA data delivery README (synthetic: alma-regen synth --style cycle5)\n\n"
        f"Member ObsUnitSet: {spec['mous']}\nProject: {spec['project']}\n\n{VERSION_LINE}\n\n"
        "Run script/*scriptForPI.py in CASA 5.1.1 with the pipeline (casa --pipeline) to restore the "
        "calibrated data into calibrated/.\n")
    (member / "qa" / f"{mous_f}.qa2_report.html").write_text(
        f"<html><body><h1>QA2 report {spec['mous']}</h1><p>{VERSION_LINE}</p></body></html>\n")
    manifest = member / "calibration" / f"{mous_f}.{synth.RECIPE}.pipeline_manifest.xml"
    manifest.write_text(synth.pipeline_manifest(spec, CASA).replace(synth.PIPELINE_VERSION, PIPELINE))


def derive(result: dict, out) -> dict:
    """The cycle5 delivery of a synthesize() result (same data, Cycle 5 files and names)."""
    return dict(repack.derive(result, out, project=project_of(result["seed"]), edit=edit), casa_version=CASA)


def build(out, *, ebs: int, seed: int, runner=None) -> dict:
    return repack.synthesize_then(derive, out, ebs=ebs, seed=seed, runner=runner)
