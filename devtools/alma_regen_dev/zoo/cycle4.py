"""Style cycle4: a Cycle 4 (2016) package, with real CASA data (the native restore runs on it).

As Cycles 0-4 packed a MOUS: no `_auxiliary.tar`, no README beside the tars; script/,
calibration/, qa2/ (the QA2 report, `CASA version: 4.7.2, Pipeline: r39732 (Cycle4-R2-B)`),
log/, product/ and the README (named `README`, without version line) inside the
`_001_of_001.tar`. No pipeline manifest: the restore finds each EB's session from the restore
script's `session=[...]` and the caltables by the pipeline's naming. Two sessions (one EB each
by default), the pre-2021 restore template. The data are synthesize()'s (two sessions asked for).
"""
from .. import synth
from . import repack

CASA = "4.7.2"
VERSION_LINE = f"CASA version: {CASA}, Pipeline: r39732 (Cycle4-R2-B)"


def project_of(seed: int) -> str:
    return f"2016.1.{seed % 100000:05d}.S"


def sessions_for(ebs: int) -> list:
    """Two sessions at least (one EB each for 2 EBs): session_1, then session_2 for the rest."""
    return [1] + [2] * (ebs - 1) if ebs > 1 else [1]


def edit(spec, member) -> None:
    mous_f = spec["mous_file"]
    repack.write_ppr(spec, member)
    repack.write_restore_script(spec, member, "old")
    for manifest in (member / "calibration").glob("*pipeline_manifest.xml"):
        manifest.unlink()
    (member / synth.naming.readme_name(spec["mous"])).unlink()
    (member / "README").write_text(
        f"ALMA Cycle 4 data delivery (synthetic: alma-regen synth --style cycle4)\n\n"
        f"Project: {spec['project']}\nMember ObsUnitSet: {spec['mous']}\n\n"
        "The CASA version of the calibration is in qa2/: restore with scriptForPI.py in that CASA.\n")
    (member / "qa").rename(member / "qa2")
    (member / "qa2" / f"{mous_f}.qa2_report.html").write_text(
        f"<html><body><h1>QA2 report {spec['mous']}</h1><p>{VERSION_LINE}</p></body></html>\n")


def derive(result: dict, out) -> dict:
    """The cycle4 package of a synthesize() result (it must have two sessions or more)."""
    if len(result["sessions"]) < 2:
        raise synth.PermanentError("the cycle4 style needs a delivery of two sessions or more")
    return dict(repack.derive(result, out, project=project_of(result["seed"]), edit=edit, old_package=True),
                casa_version=CASA)


def build(out, *, ebs: int, seed: int, runner=None) -> dict:
    if ebs < 2:
        raise synth.PermanentError("--style cycle4 needs --ebs 2 or more (two sessions)")
    return repack.synthesize_then(derive, out, ebs=ebs, seed=seed, runner=runner, sessions=sessions_for(ebs))
