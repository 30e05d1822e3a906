"""Fidelity of regenerated images against the delivered product/, with real CASA."""
import json
import shutil
import sys
from pathlib import Path

import pytest

from alma_regen import fidelity
from alma_regen.casa.runner import CasaRunner
from imaging_fixtures import fresh_member

TESTS = Path(__file__).resolve().parent


def _with_products(native_imaged, tmp_path) -> Path:
    """A private member folder holding the native run's regenerated FITS."""
    src, _ = native_imaged
    member = fresh_member(src, tmp_path)
    shutil.copytree(src / "imaging" / "products", member / "imaging" / "products")
    return member


def test_native_images_match_the_delivered_products(native_imaged):
    member, _ = native_imaged
    doc = fidelity.check_fidelity(member)
    assert doc["ok"] and doc["summary"] == {"pass": 4, "fail": 0, "no counterpart": 0}
    on_disk = json.loads((member / "imaging" / "fidelity.json").read_text())
    assert on_disk["summary"] == doc["summary"]
    for entry in doc["images"]:
        c = entry["checks"]
        assert abs(c["peak"]["rel"]) < 0.05 and c["peak_position"]["checked"]
        assert c["beam"]["rel_major"] < 0.1
        assert Path(entry["regenerated"]["thumbnail"]).is_file()


def test_a_scaled_product_fails_with_the_numbers(native_imaged, tmp_path):
    member = _with_products(native_imaged, tmp_path)
    cont = next((member / "product").glob("*spw0.cont.I.pbcor.fits"))
    scaled = tmp_path / "scaled.fits"
    CasaRunner().run([sys.executable, TESTS / "casa" / "scale_fits.py", cont, scaled, 1.25], cwd=tmp_path)
    cont.unlink()  # the copy is a regular file: the shared delivery is untouched
    shutil.move(scaled, cont)
    with pytest.raises(fidelity.FidelityError) as err:
        fidelity.check_fidelity(member)
    msg = str(err.value)
    assert "1 regenerated image(s) do not match" in msg and cont.name in msg
    assert "peak 0.24" in msg and "vs delivered 0.30" in msg and "tolerance 5 %" in msg
    doc = json.loads((member / "imaging" / "fidelity.json").read_text())
    assert doc["summary"]["fail"] == 1 and not doc["ok"]
    bad = next(e for e in doc["images"] if e["status"] == "fail")
    assert bad["checks"]["peak"]["rel"] == pytest.approx(1 / 1.25 - 1, abs=0.01)


def test_tolerances_are_configurable(native_imaged, tmp_path, monkeypatch):
    member = _with_products(native_imaged, tmp_path)
    monkeypatch.setenv(fidelity.TOLERANCES_ENV, json.dumps({"peak_rel": 1e-6, "peak_sigma": 0.0}))
    doc = fidelity.check_fidelity(member, raise_on_failure=False)
    assert doc["tolerances"]["peak_rel"] == 1e-6 and doc["summary"]["fail"] == 4
    with pytest.raises(Exception, match="unknown fidelity tolerance"):
        fidelity.tolerances({"peak": 1})


def test_an_image_without_counterpart_is_reported(native_imaged, tmp_path):
    member = _with_products(native_imaged, tmp_path)
    gone = next((member / "product").glob("*spw1.cube.I.pbcor.fits"))
    gone.unlink()
    doc = fidelity.check_fidelity(member)
    entry = next(e for e in doc["images"] if e["image"] == gone.name)
    assert entry["status"] == "no counterpart" and entry["counterpart"] is None
    assert doc["ok"] and doc["summary"]["no counterpart"] == 1


def test_counterparts_match_by_name_or_key(tmp_path):
    (tmp_path / "member.uid___A001_X1_X2.T_sci.spw5.mfs.I.pbcor.fits").write_bytes(b"")
    (tmp_path / "member.uid___A001_X1_X2.T_sci.spw5.mfs.I.pb.fits").write_bytes(b"")
    found = fidelity.counterparts(["member.uid___A001_X1_X2.T_sci.spw5.cont.I.pbcor.fits",
                                   "member.uid___A001_X1_X2.T_sci.spw6.cont.I.pbcor.fits"], tmp_path)
    assert found["member.uid___A001_X1_X2.T_sci.spw5.cont.I.pbcor.fits"].name.endswith("spw5.mfs.I.pbcor.fits")
    assert found["member.uid___A001_X1_X2.T_sci.spw6.cont.I.pbcor.fits"] is None
