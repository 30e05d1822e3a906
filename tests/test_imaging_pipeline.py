"""The imaging pipeline engine with the real ALMA pipeline (issue 9, item 6).

A synthetic delivery is restored with the native engine on the default
modular CASA (alma_regen.calibration.calibrate), then imaged by the real
pipeline's imaging recipe (imaging.PIPELINE_RECIPE) under the pipeline CASA
of tests/fixtures_pipeline.py, and its products go through the fidelity check
against product/. One restore and one pipeline run per session (about 3
minutes on 2 cores). Without the pipeline release these tests skip, saying
why; under CI=true they fail.
"""
import json
import shutil
from pathlib import Path

import pytest

from alma_regen import calibration, fidelity, imaging, naming
from alma_regen.casa.registry import CasaRegistry, default_modular, load_registry
from alma_regen.errors import CasaError
from alma_regen_dev.synth import synthesize

# The pipeline cleans inside an auto-multithresh mask, which stays empty when
# the PSF's sidelobes are above 1/sidelobethreshold (0.5) of its peak: with
# the synthetic delivery's default 8 antennas they are at 0.60 and nothing is
# cleaned; 16 antennas (still far fewer than ALMA's 43) give a PSF it masks.
ANTENNAS = 16
_CACHE = {}


@pytest.fixture(scope="session")
def pipeline_imaged(pipeline_registry, tmp_path_factory):
    """(synth result, member folder, imaging record, fidelity document), made once."""
    if "run" not in _CACHE:
        synth = synthesize(tmp_path_factory.mktemp("synth_pipeline"), ebs=2, seed=1, antennas=ANTENNAS)
        member = tmp_path_factory.mktemp("pipeline_imaging") / Path(synth["member_dir"]).name
        shutil.copytree(synth["member_dir"], member, symlinks=True)
        # The restore runs on the default modular CASA alone: no pipeline needed for it.
        calibration.calibrate(member, registry=load_registry(""))
        record = imaging.image(member, engine="pipeline", registry=pipeline_registry)
        doc = fidelity.check_fidelity(member, raise_on_failure=False)
        _CACHE["run"] = (synth, member, record, doc)
    return _CACHE["run"]


def _name(synth, spw, mode, kind):
    return (f"member.{naming.uid_to_file(synth['mous_uid'])}.{synth['truth']['target']['name']}_sci"
            f".spw{spw}.{mode}.regcal.I.{kind}.fits")


def test_recipe_runs_to_completion_with_the_real_pipeline(pipeline_imaged, pipeline_registry):
    _, member, record, _ = pipeline_imaged
    assert record["engine"] == "pipeline"
    assert record["pipeline_version"] == next(c.pipeline for c in pipeline_registry.launchers if c.has_pipeline)
    # Judged by the context: every task of the recipe is a stage, and none holds an error.
    assert [s["task"] for s in record["stages"]] == [task for task, _ in imaging.PIPELINE_RECIPE]
    assert [s["stage"] for s in record["stages"]] == list(range(1, len(imaging.PIPELINE_RECIPE) + 1))
    bad = [s for s in record["stages"] if not s["ok"]]
    assert not bad, bad
    # The pipeline imaged the restored MSs, split the targets and subtracted the continuum.
    work = member / "imaging" / "pipeline"
    for vis in record["inputs"]:
        eb = Path(vis).name[: -len(".ms")]
        assert (work / f"{eb}_targets.ms").is_dir() and (work / f"{eb}_targets_line.ms").is_dir()
    assert json.loads((member / "imaging" / "imaging.json").read_text())["engine"] == "pipeline"


def test_products_named_as_the_archive_delivers_them(pipeline_imaged):
    synth, member, record, _ = pipeline_imaged
    products = set(record["products"])
    for spw in synth["truth"]["science_spws"]:
        for mode in ("mfs", "cube"):
            for kind in ("pbcor", "pb"):
                assert _name(synth, spw, mode, kind) in products, (spw, mode, kind, sorted(products))
    assert all((member / "imaging" / "products" / p).is_file() for p in products)


def test_products_pass_the_fidelity_check(pipeline_imaged):
    synth, member, _, doc = pipeline_imaged
    compared = {r["image"]: r for r in doc["images"] if r["counterpart"]}
    # Every delivered image has its pipeline counterpart: per spw, mfs <-> cont and cube <-> cube.
    assert doc["delivered_not_regenerated"] == []
    for spw in synth["truth"]["science_spws"]:
        assert compared[_name(synth, spw, "mfs", "pbcor")]["counterpart"].endswith(f".spw{spw}.cont.I.pbcor.fits")
        assert compared[_name(synth, spw, "cube", "pbcor")]["counterpart"].endswith(f".spw{spw}.cube.I.pbcor.fits")
    failed = {name: r["failures"] for name, r in compared.items() if r["status"] != "pass"}
    assert not failed, failed
    assert doc["ok"]
    # The aggregate continuum (all spws) has no delivered counterpart: reported, not judged.
    assert [r["status"] for r in doc["images"] if not r["counterpart"]] == ["no counterpart"]


def test_cubes_are_compared_continuum_subtracted_and_hold_the_line(pipeline_imaged):
    synth, _, record, doc = pipeline_imaged
    by_name = {r["image"]: r for r in doc["images"]}
    for spw in synth["truth"]["science_spws"]:
        cube = _name(synth, spw, "cube", "pbcor")
        # hif_uvcontsub ran: the pipeline's cube holds the line alone, and the
        # delivered cube was brought to the same (its continuum taken out).
        assert cube in record["continuum_subtracted"]
        assert "minus its mean over the pipeline's continuum ranges" in by_name[cube]["delivered_as"]
    line = synth["truth"]["target"].get("line")
    if line:
        peak = by_name[_name(synth, line["spw"], "cube", "pbcor")]["regenerated"]["peak"]
        assert abs(peak / line["peak_jy"] - 1) < 0.05, peak


def test_pipeline_names_pair_with_the_delivered_ones(tmp_path):
    mous, target = "member.uid___A001_X1_X2", "TW_Hya_synth_sci"
    for name in (f"{mous}.{target}.spw0.cont.I.pbcor.fits", f"{mous}.{target}.spw0.cube.I.pbcor.fits",
                 f"{mous}.{target}.spw0.cube.I.pb.fits"):
        (tmp_path / name).write_bytes(b"")
    pairs = fidelity.counterparts([f"{mous}.{target}.spw0.mfs.regcal.I.pbcor.fits",
                                   f"{mous}.{target}.spw0.cube.selfcal.I.pbcor.fits",
                                   f"{mous}.{target}.spw0_1.cont.regcal.I.pbcor.fits"], tmp_path)
    assert {k: v and v.name for k, v in pairs.items()} == {
        f"{mous}.{target}.spw0.mfs.regcal.I.pbcor.fits": f"{mous}.{target}.spw0.cont.I.pbcor.fits",
        f"{mous}.{target}.spw0.cube.selfcal.I.pbcor.fits": f"{mous}.{target}.spw0.cube.I.pbcor.fits",
        f"{mous}.{target}.spw0_1.cont.regcal.I.pbcor.fits": None}
    assert not fidelity.is_sky(f"{mous}.{target}.spw0.mfs.regcal.I.mask.fits")


def test_cont_dat_is_read_as_data(tmp_path):
    # The layout hif_findcont writes: per field and spw, LSRK ranges, ALLCONT or NONE.
    cont = tmp_path / "cont.dat"
    cont.write_text("Field: TW Hya\n\nSpectralWindow: 25 spw_25\n230.1~230.5GHz LSRK\n230.7~230.9GHz LSRK\n\n"
                    "SpectralWindow: 27 spw_27\nFlags: ALLCONT\n232.0~232.9GHz LSRK\n\n"
                    "SpectralWindow: 29 spw_29\nNONE\n__import__('os').system('true')\n")
    assert imaging.read_cont_dat(cont) == {"TW Hya": {
        "25": {"ranges_ghz": [[230.1, 230.5], [230.7, 230.9]], "frame": "LSRK", "allcont": False},
        "27": {"ranges_ghz": [[232.0, 232.9]], "frame": "LSRK", "allcont": True},
        "29": {"ranges_ghz": [], "frame": None, "allcont": False}}}
    assert imaging.read_cont_dat(tmp_path / "missing.dat") == {}


def test_pipeline_engine_without_a_pipeline_casa_says_what_is_needed(tmp_path):
    modular_only = CasaRegistry([default_modular()])
    with pytest.raises(CasaError, match=r"needs a CASA with the ALMA pipeline.*add-pipeline.*installed: .*modular"):
        imaging.choose_engine(tmp_path, "pipeline", modular_only)


def test_auto_picks_the_pipeline_for_a_pipeline_imaged_delivery(pipeline_imaged, pipeline_registry, tmp_path):
    _, member, _, _ = pipeline_imaged
    copy = tmp_path / member.name
    shutil.copytree(member, copy, symlinks=True, ignore=shutil.ignore_patterns("calibrated", "imaging", "raw"))
    next((copy / "script").glob("*scriptForImaging.py")).write_text("# The pipeline made the images.\n")
    assert imaging.choose_engine(copy, "auto", pipeline_registry)["engine"] == "pipeline"
    assert imaging.choose_engine(copy, "auto", CasaRegistry([default_modular()]))["engine"] == "native"
