"""Style single-dish: a total-power (TP) delivery as a FILE LAYOUT ONLY.

Only the files and their names are a single-dish delivery's: the `hsd_calimage` restore script
(`hsd_restoredata(vis=[...], session=[...], ocorr_mode='ao')`) and calibration pipescript, a PPR
for hsd_calimage, `calibration/<MOUS>.jyperk.csv` (the Jy/K factors scriptForPI copies for a TP
pipeline run) and a manifest naming the hsd recipe. The ASDMs and caltables are the
interferometric data of the synthesized delivery it derives from: nothing can be restored from
it. What it is for: staging and inspection of a TP layout, and `auto`'s routing: a single-dish
delivery goes to the pipeline engine (scriptForPI under a pipeline CASA), and the native engine
refuses it (alma_regen.delivery.single_dish_signs). `layout_only` is True in its JSON.
"""
from .. import synth
from . import repack

RECIPE = "hsd_calimage"


def edit(spec, member) -> None:
    mous_f = spec["mous_file"]
    script = member / "script"
    for p in script.glob(f"*.{synth.RECIPE}.*.py"):
        p.unlink()
    ebs, sessions = synth.ebs_of(spec), repack.sessions_per_eb(spec)
    (script / f"member.{mous_f}.{RECIPE}.casa_piperestorescript.py").write_text(
        f"h_init()\ntry:\n    hsd_restoredata (vis={synth._py_list(ebs)}, session={synth._py_list(sessions)}, "
        "ocorr_mode='ao')\nfinally:\n    h_save()\n")
    vis = ", ".join(repr(e) for e in ebs)
    (script / f"member.{mous_f}.{RECIPE}.casa_pipescript.py").write_text(
        f"context = h_init()\ntry:\n    hsd_importdata(vis=[{vis}])\n    hsd_flagdata()\n    h_tsyscal()\n"
        "    hsd_tsysflag()\n    hsd_skycal()\n    hsd_k2jycal()\n    hsd_applycal()\n    hsd_baseline()\n"
        "    hsd_blflag()\n    hsd_imaging()\n    hsd_exportdata()\nfinally:\n    h_save()\n")
    ppr = synth.ppr_xml(spec).replace(f"<ProcedureTitle>{synth.RECIPE}</ProcedureTitle>",
                                      f"<ProcedureTitle>{RECIPE}</ProcedureTitle>")
    (script / f"PPR_{mous_f}.xml").write_text(ppr)
    # One imaging script with only comments: the TP pipeline made the images.
    (script / f"member.{mous_f}.scriptForImaging.py").write_text(
        "# The single-dish pipeline (hsd_imaging) made the images of this delivery.\n")
    cal = member / "calibration"
    for p in cal.glob(f"*.{synth.RECIPE}.pipeline_manifest.xml"):
        p.write_text(synth.pipeline_manifest(spec, result_casa(p)).replace(synth.RECIPE, RECIPE))
        p.rename(cal / f"{mous_f}.{RECIPE}.pipeline_manifest.xml")
    # The k2jycal factors per EB, spw, antenna and polarisation (the pipeline's jyperk.csv columns).
    rows = ["MS,Antenna,Spwid,Polarization,Factor"]
    rows += [f"{eb}.ms,DV{a:02d},{spw},{pol},{43.0 + a * 0.1:.2f}" for eb in ebs for a in range(1, 5)
             for spw in (0, 1) for pol in ("XX", "YY")]
    (cal / f"{mous_f}.jyperk.csv").write_text("\n".join(rows) + "\n")


def result_casa(manifest) -> str:
    """The CASA version a synthesized manifest records (kept in the rewritten one)."""
    from alma_regen import safexml
    found = safexml.find_all(safexml.parse_file(manifest), "casaversion")
    return found[0].get("name") if found else ""


def derive(result: dict, out) -> dict:
    """The single-dish layout of a synthesize() result."""
    return dict(repack.derive(result, out, project=result["project"], edit=edit), layout_only=True)


def build(out, *, ebs: int, seed: int, runner=None) -> dict:
    return repack.synthesize_then(derive, out, ebs=ebs, seed=seed, runner=runner)
