"""Issue 14 (operator's view): image previews worth looking at, and CASA's log levels.

Previews: real CASA images (the native imaging of the shared synthetic delivery),
the real fidelity check, real matplotlib and astropy. Log levels: real child
processes through CasaRunner, and a real CASA child posting to its logger.
"""
import logging
import shutil
import sys
from pathlib import Path

import pytest

from alma_regen import fidelity, previews
from alma_regen.casa.registry import load_registry
from alma_regen.casa.runner import CasaRunner
from alma_regen.products.summary import summary_html
from imaging_fixtures import fresh_member

RUNNER_LOG = "alma_regen.casa.runner"


# ------------------------------------------------------------------ previews
@pytest.fixture(scope="module")
def checked(native_imaged, tmp_path_factory):
    """A private member with the native images, after the fidelity check."""
    src, _ = native_imaged
    member = fresh_member(src, tmp_path_factory.mktemp("previews"))
    shutil.copytree(src / "imaging" / "products", member / "imaging" / "products")
    doc = fidelity.check_fidelity(member)
    return member, doc, native_imaged[1]


@pytest.mark.casa
def test_each_image_has_a_preview_beside_the_delivered_one(checked):
    import matplotlib.image as mpimg
    import numpy as np

    member, doc, _ = checked
    assert doc["images"], "the native run made images"
    for entry in doc["images"]:
        p = entry.get("preview")
        assert p, f"no preview for {entry['image']}"
        png = Path(p["path"])
        assert png.name == f"{entry['image']}.preview.png" and png.parent == member / "imaging" / "thumbnails"
        img = mpimg.imread(png)
        # Three panels (regenerated, delivered, difference) side by side: a wide figure.
        assert img.shape[1] == round(previews.PANEL_IN * 3 * previews.DPI)
        assert img.shape[0] == round(previews.HEIGHT_IN * previews.DPI)
        # Not a blank canvas: the images and their colour bars cover much of it.
        assert np.std(img[..., :3]) > 0.05
        # The words say what the picture shows, with the fidelity numbers.
        alt = p["alt"]
        assert entry["counterpart"] in alt and "difference" in alt
        n = previews.numbers(entry)
        assert f"peak ratio {n['peak_ratio']:.3f}" in alt and f"rms ratio {n['rms_ratio']:.3f}" in alt
        assert f"max |difference| {n['diff_max_sigma']:.1f} x rms" in alt and "beams" in alt
        assert 0.95 < n["peak_ratio"] < 1.05, n
    cubes = [e for e in doc["images"] if ".cube." in e["image"]]
    assert cubes and all(e["preview"]["channel"] > 0 for e in cubes), "a cube shows its peak channel"


@pytest.mark.casa
def test_the_preview_planes_are_the_compared_ones(checked):
    """The difference panel shows what fidelity measured: its largest |value| / rms is the
    diff_max_abs_sigma of a 2-D image (a cube's is over every channel, at least the plane's)."""
    import numpy as np

    member, doc, _ = checked
    for entry in doc["images"]:
        planes = np.load(entry["checks"]["difference"]["planes"])
        rms = entry["delivered"]["rms"]
        shown = float(np.nanmax(np.abs(planes["regenerated"] - planes["delivered"]))) / rms
        measured = entry["checks"]["difference"]["diff_max_abs_sigma"]
        if ".cube." in entry["image"]:
            assert shown <= measured * 1.0001
        else:
            assert shown == pytest.approx(measured, rel=1e-3)


@pytest.mark.casa
def test_summary_page_shows_previews_with_alt_text_and_numbers(checked):
    member, doc, imaging = checked
    keys = [f"products/{e['image']}" for e in doc["images"]]
    keys += [f"thumbnails/{Path(e['preview']['path']).name}" for e in doc["images"]]
    page = summary_html("uid://A001/X1/X2", "r1", imaging, doc, keys)
    for e in doc["images"]:
        name = Path(e["preview"]["path"]).name
        assert f'src="thumbnails/{name}"' in page
        assert f'alt="{e["preview"]["alt"]}"' in page.replace("&#x27;", "'").replace("&quot;", '"')
        assert f"{previews.numbers(e)['peak_ratio']:.4f}" in page  # as the page rounds it
    assert "thumbnails/" in page and "<figure" in page


def test_an_image_without_counterpart_gets_a_single_panel(tmp_path):
    """A real FITS (written with astropy) and its plane: one panel, no difference, said so."""
    import matplotlib.image as mpimg
    import numpy as np
    from astropy.io import fits

    y, x = np.mgrid[:64, :64]
    img = np.exp(-((x - 30) ** 2 + (y - 34) ** 2) / 8.0).astype(np.float32)
    hdr = fits.Header({"CTYPE1": "RA---SIN", "CTYPE2": "DEC--SIN", "CRVAL1": 150.0, "CRVAL2": -30.0,
                       "CDELT1": -0.1 / 3600, "CDELT2": 0.1 / 3600, "CRPIX1": 33, "CRPIX2": 33,
                       "CUNIT1": "deg", "CUNIT2": "deg", "BUNIT": "Jy/beam"})
    fits.PrimaryHDU(img, hdr).writeto(tmp_path / "x.fits")
    np.savez_compressed(tmp_path / "x.npz", image=img, channel=0)
    entry = {"image": "member.uid___A001_X1_X2.T_sci.spw5.cont.I.pbcor.fits", "status": "no counterpart",
             "counterpart": None}
    out = previews.render(entry, tmp_path / "x.npz", tmp_path / "x.fits", tmp_path / "p.png",
                          regen_beam={"major_arcsec": 0.5, "minor_arcsec": 0.3, "pa_deg": 30.0}, rms=0.01)
    assert mpimg.imread(out["path"]).shape[1] == round(previews.PANEL_IN * previews.DPI)
    assert "no delivered image to compare with" in out["alt"]


# ------------------------------------------------------------------ log levels
def _script(tmp_path, body) -> Path:
    p = tmp_path / "talk.py"
    p.write_text(body)
    return p


def test_casa_warn_and_severe_lines_keep_their_level(tmp_path, caplog):
    lines = ["2026-01-01 00:00:00\tINFO\ttclean::::\tstarting",
             "2026-01-01 00:00:01\tWARN\ttclean::::\tthe beam is not well sampled",
             "2026-01-01 00:00:02\tSEVERE\tflagdata::::\tno such column"]
    s = _script(tmp_path, "".join(f"print({ln!r})\n" for ln in lines))
    with caplog.at_level(logging.INFO, logger=RUNNER_LOG), pytest.raises(Exception, match="1 SEVERE line"):
        CasaRunner().run([sys.executable, s], tmp_path)
    level = {r.getMessage(): r.levelno for r in caplog.records}
    assert level[lines[0]] == logging.INFO
    assert level[lines[1]] == logging.WARNING
    assert level[lines[2]] == logging.ERROR


def test_an_expected_severe_is_a_warning_and_benign_lines_are_said_once_at_info(tmp_path, caplog):
    stale = ("2026-01-01 00:00:00\tSEVERE\tMeasTable::dUTC(Double)\tLeap second table TAI_UTC seems "
             "out-of-date.")
    expected = "2026-01-01 00:00:01\tSEVERE\timager::::\tknown harmless thing"
    s = _script(tmp_path, f"for _ in range(4):\n    print({stale!r})\nprint({expected!r})\n")
    with caplog.at_level(logging.INFO, logger=RUNNER_LOG):
        rec = CasaRunner().run([sys.executable, s], tmp_path, allow_severe=["known harmless"])
    assert rec.severe == [] and len(rec.warnings) == 1
    benign = [r for r in caplog.records if "stale measures" in r.getMessage()]
    assert len(benign) == 1 and benign[0].levelno == logging.INFO
    assert not any("Leap second" in r.getMessage() for r in caplog.records), "the raw lines are not repeated"
    assert {r.getMessage(): r.levelno for r in caplog.records}[expected] == logging.WARNING


@pytest.mark.casa
def test_a_real_casa_warning_is_logged_at_warning(tmp_path, caplog):
    """CASA's own logger (casalog.post with priority WARN), through --log2term, as tasks log."""
    from alma_regen.paths import include_dir
    s = _script(tmp_path, f"import sys\nsys.path.insert(0, {str(include_dir() / 'casa_scripts')!r})\n"
                          "import casa_boot\ncasa_boot.casa_log_to_console()  # as our CASA scripts do\n"
                          "from casatasks import casalog\n"
                          "casalog.post('regen-test: a real CASA warning', 'WARN', 'regen_test')\n"
                          "casalog.post('regen-test: an info line', 'INFO', 'regen_test')\n")
    cmd = load_registry().modular().command(s, [], shell=False)
    with caplog.at_level(logging.INFO, logger=RUNNER_LOG):
        CasaRunner().run(cmd, tmp_path)
    warn = [r for r in caplog.records if "regen-test: a real CASA warning" in r.getMessage()]
    info = [r for r in caplog.records if "regen-test: an info line" in r.getMessage()]
    assert warn and all(r.levelno == logging.WARNING for r in warn), [(r.levelno, r.getMessage()) for r in warn]
    assert info and all(r.levelno == logging.INFO for r in info)
