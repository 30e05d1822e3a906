"""Imaging engines on the synthetic delivery, with real CASA.

The calibrated inputs (one native restore per EB, split as scriptForPI
does) and one native imaging run are shared through tests/imaging_fixtures.py.
"""
import json
import math
import os
import shutil
from pathlib import Path

import pytest

from alma_regen import fidelity, imaging
from alma_regen.errors import CasaError, PermanentError
from imaging_fixtures import fresh_member


def _radec_deg(ra: str, dec: str):
    h, m, s = (float(x) for x in ra.rstrip("s").replace("h", " ").replace("m", " ").split())
    d, dm, ds = dec.rstrip("s").replace("d", " ").replace("m", " ").split()
    sign = -1 if d.startswith("-") else 1
    return 15 * (h + m / 60 + s / 3600), sign * (abs(float(d)) + float(dm) / 60 + float(ds) / 3600)


def test_native_units_one_per_target_and_science_spw(native_imaged, synth_delivery):
    member, record = native_imaged
    plan = json.loads((member / "imaging" / "plan.json").read_text())
    target = synth_delivery["truth"]["target"]["name"]
    assert [(u["target"], u["spw"]) for u in plan["units"]] == [(target, s) for s in synth_delivery["truth"]["science_spws"]]
    assert plan["datacolumn"] == "data"  # split MSs: DATA holds the calibrated data
    assert all(u["vis"] and len(u["vis"]) == len(synth_delivery["ebs"]) for u in plan["units"])
    assert record["engine"] == "native" and len(record["unit_results"]) == len(plan["units"])


def test_native_products_carry_the_alma_names(native_imaged, synth_delivery):
    _, record = native_imaged
    # The same names as the observatory's product/ FITS.
    assert sorted(record["products"]) == sorted(synth_delivery["products"])


def test_native_peak_is_the_known_flux_at_the_known_position(native_imaged, synth_delivery, tmp_path):
    member, _ = native_imaged
    source = synth_delivery["truth"]["target"]["sources"][0]
    ra, dec = _radec_deg(source["ra"], source["dec"])
    images = [{"id": p.name, "path": str(p), "pb": str(fidelity.pb_for(p))}
              for p in sorted((member / "imaging" / "products").glob("*.pbcor.fits"))]
    assert len(images) == 4
    stats = fidelity.measure(images, [], tmp_path)["images"]
    line = synth_delivery["truth"]["target"]["line"]
    assert line["source"] == source["name"]
    nchan = synth_delivery["truth"]["spws"][line["spw"]]["nchan"]
    for name, s in stats.items():
        expected = source["flux_jy"]
        if f".spw{line['spw']}." in name:
            # The line on this source: its peak in the cube, its area shared
            # out over the channels in the continuum (a Gaussian's area is
            # 1.0645 x FWHM x peak).
            expected += line["peak_jy"] if ".cube." in name else \
                1.0645 * line["fwhm_chan"] * line["peak_jy"] / nchan
        assert abs(s["peak"] / expected - 1) < 0.05, (name, s["peak"], expected)
        cell = s["increment_arcsec"][0]
        off = math.hypot((s["peak_ra_deg"] - ra) * math.cos(math.radians(dec)), s["peak_dec_deg"] - dec) * 3600
        assert off < 2 * cell, (name, off, cell)
        # Cleaned to the noise: the rms is a small fraction of the peak.
        assert s["rms"] < 0.01 * s["peak"], (name, s["rms"])


def test_native_unit_runs_alone(calibrated_member, tmp_path):
    """What a mapped Airflow task does: list the units, run one."""
    member = fresh_member(calibrated_member, tmp_path)
    units = imaging.native_units(member)
    result = imaging.run_native_unit(member, units[1], modes=("cont",))
    assert [i["mode"] for i in result["images"]] == ["cont"]
    assert sorted(p.name for p in (member / "imaging" / "products").iterdir()) == [
        Path(result["images"][0]["fits"]["pb"]).name, Path(result["images"][0]["fits"]["pbcor"]).name]
    with pytest.raises(PermanentError, match="did not finish"):
        imaging.imaging_record(member)  # units[0] has not run


def test_script_engine_runs_the_interactive_script_unattended(calibrated_member, synth_delivery, tmp_path):
    member = fresh_member(calibrated_member, tmp_path)
    script = next((member / "script").glob("*scriptForImaging.py"))
    before = script.read_bytes()
    assert b"interactive=True" in before
    record = imaging.image(member)  # auto: the delivery was imaged by a script
    assert record["engine"] == "script" and "scriptForImaging.py" in record["reason"]
    assert script.read_bytes() == before  # the delivery's copy is untouched
    calls = record["calls"]
    # Only the first of the script's tclean calls asks for interactive masking.
    assert [c["interactive_forced_off"] for c in calls] == [True, False, False, False]
    prefix = f"member.{synth_delivery['mous_uid'].replace('uid://', 'uid___').replace('/', '_')}.TW_Hya_synth_sci"
    assert f"{prefix}.spw0.cont.I.pbcor.fits" in record["products"]
    assert f"{prefix}.spw1.cube.I.pbcor.fits" in record["products"]
    assert f"{prefix}.spw0.cont.I.pb.fits" in record["products"]


def test_script_engine_fails_honestly_without_its_inputs(calibrated_member, tmp_path):
    member = fresh_member(calibrated_member, tmp_path)
    # Restored but not split: the script's *.ms.split.cal do not exist.
    for link in (member / "calibrated").glob("*.ms.split.cal"):
        link.unlink()
        os.symlink(f"working/{link.name[:-len('.split.cal')]}", link.with_name(link.name[:-len(".split.cal")]))
    with pytest.raises(CasaError, match=r"needs uid___\w+\.ms\.split\.cal, which does not exist"):
        imaging.image(member, engine="script")


def test_auto_uses_native_for_pipeline_imaging_without_a_pipeline_casa(member_copy):
    script = next((member_copy / "script").glob("*scriptForImaging.py"))
    script.write_text("# The pipeline made the images.\n")
    choice = imaging.choose_engine(member_copy)
    assert choice["engine"] == "native"
    assert "no pipeline CASA is installed" in choice["reason"]


def test_pipeline_engine_names_what_is_installed(member_copy):
    with pytest.raises(CasaError, match=r"with the ALMA pipeline.*installed: .*modular"):
        imaging.image(member_copy, engine="pipeline")


def test_calibrated_ms_prefers_the_split(tmp_path):
    cal = tmp_path / "calibrated"
    (cal / "working" / "a.ms").mkdir(parents=True)
    (cal / "working" / "a.ms.split.cal").mkdir()
    os.symlink("working/a.ms", cal / "a.ms")
    assert imaging.calibrated_ms(tmp_path) == [cal / "a.ms"]
    os.symlink("working/a.ms.split.cal", cal / "a.ms.split.cal")
    assert imaging.calibrated_ms(tmp_path) == [cal / "a.ms.split.cal"]
    shutil.rmtree(cal / "working")  # dangling links are not inputs
    with pytest.raises(PermanentError, match="holds no"):
        imaging.calibrated_ms(tmp_path)


def test_unknown_engine(member_copy):
    with pytest.raises(PermanentError, match="unknown imaging engine"):
        imaging.choose_engine(member_copy, "magic")


def test_mapped_operators_then_fidelity(calibrated_member, tmp_path):
    """The DAG's shape: list the units, one mapped task per unit, then the fidelity check."""
    from alma_regen.airflow.operators.imaging import (FidelityOperator, NativeImagingUnitOperator,
                                              NativeImagingUnitsOperator)
    member = fresh_member(calibrated_member, tmp_path)
    units = NativeImagingUnitsOperator(task_id="units", member_dir=str(member)).execute({})
    assert len(units) == 2
    for i, unit in enumerate(units):
        out = NativeImagingUnitOperator(task_id=f"unit_{i}", member_dir=str(member), unit=unit).execute({})
        assert len(out["fits"]) == 4
    assert imaging.imaging_record(member)["products"] == sorted(p.name for p in (member / "imaging" / "products").iterdir())
    result = FidelityOperator(task_id="fidelity", member_dir=str(member)).execute({})
    assert result["ok"] and result["summary"]["pass"] == 4
