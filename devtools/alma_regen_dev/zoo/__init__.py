"""The delivery zoo: `alma-regen synth --style STYLE`, one module per style.

Every style's module (`alma_regen_dev.zoo.<style>`, '-' as '_') has
`build(out, *, ebs, seed, runner=None) -> dict`: it writes OUT/archive/ as the archive
serves that kind of package (and OUT/delivery/, the untarred member) and returns the JSON
of `alma_regen_dev.synth.synthesize()` plus "style" and "layout_only" (True when the
style is a file layout only: its measurement data are not real CASA data and nothing can
be restored from it, only staged, inspected and routed).

The styles (what each one is for):
  cycle10       today's delivery: `synthesize()` unchanged (auxiliary tar, pipeline manifest)
  cycle5        a Cycle 5 package: manifest, README with the old "CASA version" line, qa/ report
  cycle4        a Cycle 0-4 package: no auxiliary tar (script/, calibration/, qa2/ and the
                README inside the product tar), no manifest, two sessions, the old restore script
  manual        manual calibration: a scriptForCalibration per EB (recalibrating under
                scriptForPI's applyonly), a flux script, an ephemeris; no pipeline files
  polarisation  full polarisation, session-level polcal tables (its own synthesis: the
                data differ: four correlations, a polarisation calibrator)
  single-dish   layout only: an hsd_ restore script and *jyperk*.csv; what `auto` routes
                to scriptForPI under a pipeline CASA

Styles that derive from one synthesized delivery (cycle5, cycle4, manual, single-dish) repack
`synthesize()`'s member folder (repack.derive): no second copy of the synthesis code, and tests
derive several styles from one session fixture.
"""
import importlib

from alma_regen.errors import PermanentError

STYLES = ("cycle10", "cycle5", "cycle4", "manual", "polarisation", "single-dish")
DEFAULT_STYLE = "cycle10"


def module_name(style: str) -> str:
    return f"{__name__}.{style.replace('-', '_')}"


def build(style: str, out, *, ebs: int, seed: int, runner=None, **options) -> dict:
    """Build the delivery of `style` under OUT and describe it (see the module doc).

    options: style-specific keywords (cycle10 takes synthesize()'s antennas, sessions and
    restore_template); a style that takes none refuses them."""
    if style not in STYLES:
        raise PermanentError(f"unknown delivery style {style!r} (styles: {', '.join(STYLES)})")
    name = module_name(style)
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise PermanentError(f"delivery style {style!r} is not built yet (no module {name})") from None
    result = module.build(out, ebs=ebs, seed=seed, runner=runner, **options)
    result.setdefault("layout_only", False)
    result["style"] = style
    return result
