"""`alma-regen synth` makes a delivery whose right answer is known, with real CASA.

The fixture is proven right here: the delivered calibration, applied to the
raw ASDMs after restoring Pipeline_Final, recovers the truth within the
noise, and the raw data do not.
"""
import math
import tarfile
from pathlib import Path

import pytest

from alma_regen import naming
from alma_regen.asdm import validate_asdm
from alma_regen.safexml import find_all, parse_file
from fixtures_synth import restore_by_script, truth_check

pytestmark = pytest.mark.casa


def test_contract_fields(synth_delivery):
    s = synth_delivery
    assert naming.UID_RE.match(s["mous_uid"])
    assert naming.PROJECT_RE.match(s["project"])
    assert len(s["ebs"]) == 2 and len(set(s["ebs"])) == 2
    assert all(e.startswith("uid://A002/") for e in s["ebs"])
    names = {f["name"]: f for f in s["files"]}
    for eb in s["ebs"]:
        assert names[naming.asdm_tar(s["project"], eb)]["semantics"] == "#progenitor"
    assert names[naming.auxiliary_tar(s["project"], s["mous_uid"])]["semantics"] == "#auxiliary"
    assert names[naming.product_tar(s["project"], s["mous_uid"])]["semantics"] == "#this"
    assert names[naming.readme_name(s["mous_uid"])]["semantics"] == "#documentation"
    archive = Path(s["archive_dir"])
    assert sorted(p.name for p in archive.iterdir()) == sorted(names)
    for f in s["files"]:
        assert (archive / f["name"]).stat().st_size == f["size"]
    # Small: a few MB for 2 EBs.
    assert sum(f["size"] for f in s["files"]) < 10e6
    assert s["truth"]["science_spws"] == [0, 1]
    assert [x["flux_jy"] for x in s["truth"]["target"]["sources"]] == [0.25, 0.10]


def test_tar_members_carry_the_full_prefix(synth_delivery):
    s = synth_delivery
    prefix = f"{s['project']}/science_goal.uid___A001_"
    member = f"/member.{naming.uid_to_file(s['mous_uid'])}/"
    archive = Path(s["archive_dir"])
    for f in s["files"]:
        if not f["name"].endswith(".tar"):
            continue
        with tarfile.open(archive / f["name"]) as tf:
            names = tf.getnames()
        assert names and all(n.startswith(prefix) and member in n for n in names)
        tops = {n.split(member, 1)[1].split("/")[0] for n in names if member in n and n.split(member, 1)[1]}
        if f["semantics"] == "#progenitor":
            assert tops == {"raw"}
        elif f["semantics"] == "#auxiliary":
            assert tops == {"script", "calibration", "qa", "log"}
        else:
            assert tops == {"product"}


def test_each_asdm_passes_the_validator_and_names_its_eb(synth_delivery):
    raw = Path(synth_delivery["member_dir"]) / "raw"
    for eb in synth_delivery["ebs"]:
        info = validate_asdm(raw / naming.asdm_dir(eb))
        assert info.eb_uid == eb
        assert info.scans == 5 and info.antennas == 8 and info.spws == 3
        assert info.binaries > 0


def test_delivery_files_in_the_pipeline_form(synth_delivery):
    m = Path(synth_delivery["member_dir"])
    mous_f = naming.uid_to_file(synth_delivery["mous_uid"])
    readme = (m / naming.readme_name(synth_delivery["mous_uid"])).read_text()
    assert f"CASA version used for reduction: {synth_delivery['casa_version']}" in readme
    restore = (m / "script" / f"member.{mous_f}.hifa_calimage.casa_piperestorescript.py").read_text()
    assert "h_init()" in restore and "h_save()" in restore and "ocorr_mode='ca'" in restore
    for eb in synth_delivery["ebs"]:
        assert repr(naming.uid_to_file(eb)) in restore
    imaging = (m / "script" / f"member.{mous_f}.scriptForImaging.py").read_text()
    assert "tclean(" in imaging and "interactive=True" in imaging
    ppr = parse_file(m / "script" / f"PPR_{mous_f}.xml")
    assert [e.text for e in find_all(ppr, "AsdmDiskName")] == [naming.uid_to_file(e) for e in synth_delivery["ebs"]]
    manifest = parse_file(m / "calibration" / f"{mous_f}.pipeline_manifest.xml")
    assert manifest.tag == "piperesults" and manifest.get("name") == mous_f
    asdms = [a.get("name") for a in find_all(manifest, "asdm")]
    assert asdms == [naming.uid_to_file(e) + ".ms" for e in synth_delivery["ebs"]]
    for a in find_all(manifest, "asdm"):
        for child in a:
            assert (m / "calibration" / child.get("name")).is_file()
    caltables = find_all(manifest, "caltables")[0].get("name")
    with tarfile.open(m / "calibration" / caltables) as tf:
        tops = {n.split("/")[0] for n in tf.getnames()}
    assert tops and all(any(t.startswith(naming.uid_to_file(e) + ".ms.") for e in synth_delivery["ebs"]) for t in tops)
    for eb in synth_delivery["ebs"]:
        f = naming.uid_to_file(eb)
        lines = (m / "calibration" / f"{f}.ms.calapply.txt").read_text().splitlines()
        assert lines[0] == f"# Apply file for {f}.ms"
        assert len(lines) > 1 and all(ln.startswith("applycal(vis='/") for ln in lines[1:])
        with tarfile.open(m / "calibration" / f"{f}.ms.flagversions.tgz") as tf:
            names = tf.getnames()
        assert f"{f}.ms.flagversions/flags.Pipeline_Final" in names
        assert f"{f}.ms.flagversions/FLAG_VERSION_LIST" in names
    products = sorted(p.name for p in (m / "product").iterdir())
    assert products == sorted(synth_delivery["products"])
    assert any(".cont.I.pbcor.fits" in p for p in products) and any(".cube.I.pbcor.fits" in p for p in products)


@pytest.fixture(scope="module")
def restored(synth_delivery, tmp_path_factory):
    """Each EB restored by hand the pipeline's way: importasdm, Pipeline_Final, calapply."""
    work = tmp_path_factory.mktemp("restore")
    out = {}
    for eb in synth_delivery["ebs"]:
        vis = restore_by_script(synth_delivery, synth_delivery["member_dir"], eb, work, split=False)
        out[eb] = {col: truth_check(vis, synth_delivery, col, work) for col in ("CORRECTED_DATA", "DATA")}
    return out


def calibrated_noise(synth, eb):
    """Thermal noise after calibration: the noise was added after the gains, so
    dividing by g_i g_j* scales it by 1/(|g_i||g_j|) baseline by baseline."""
    amp = synth["truth"]["ebs"][eb]["gain_amp"]
    n = len(amp)
    inv = [1 / (amp[i][p] * amp[j][p]) ** 2 for i in range(n) for j in range(i + 1, n) for p in range(2)]
    return synth["truth"]["noise_jy_per_visibility_component"] * math.sqrt(sum(inv) / len(inv))


def test_delivered_calibration_recovers_the_truth(restored, synth_delivery):
    for eb, checks in restored.items():
        noise = calibrated_noise(synth_delivery, eb)
        rows = checks["CORRECTED_DATA"]["rows"]
        assert {r["field"] for r in rows} == {"J1924-2914", "TW_Hya_synth"}
        for r in rows:
            # Flux right to 1 %, phases to 1 degree, and what is left is the
            # thermal noise (10 % allowed for the bandpass ripple and solution noise).
            assert abs(r["scale"] - 1) < 0.01, (eb, r)
            assert abs(r["phase_deg"]) < 1.0, (eb, r)
            assert r["resid_rms"] < 1.10 * noise, (eb, r, noise)


def test_raw_data_do_not(restored, synth_delivery):
    noise = synth_delivery["truth"]["noise_jy_per_visibility_component"]
    for eb, checks in restored.items():
        for r in checks["DATA"]["rows"]:
            assert abs(r["scale"] - 1) > 0.2 or r["resid_rms"] > 3 * noise, (eb, r)


def test_pipeline_final_flags_the_rfi(restored, synth_delivery):
    for eb, checks in restored.items():
        spw0 = [r for r in checks["CORRECTED_DATA"]["rows"] if r["spw"] == 0]
        # Edge channels (2 of 8) plus the RFI burst on the target.
        assert all(r["flag_fraction"] >= 0.25 for r in spw0)
        target = next(r for r in spw0 if r["field"] == "TW_Hya_synth")
        assert target["flag_fraction"] > 0.25
        # With the flags restored, nothing of the 40 Jy burst is left.
        assert target["max_abs"] < 2.0


def test_deterministic_for_a_seed(synth_delivery, tmp_path):
    """The same seed gives the same raw data, byte for byte; another seed another delivery.

    CASA's own tables (caltables, flag versions) carry uninitialised padding
    bytes, so those are compared by what the restore makes of them (above)."""
    from alma_regen.synth import make_spec, synthesize
    again = synthesize(tmp_path, ebs=2, seed=1)
    assert again["ebs"] == synth_delivery["ebs"] and again["truth"]["ebs"] == synth_delivery["truth"]["ebs"]
    a, b = Path(synth_delivery["archive_dir"]), Path(again["archive_dir"])
    for f in synth_delivery["files"]:
        if f["semantics"] in ("#progenitor", "#documentation"):
            assert (a / f["name"]).read_bytes() == (b / f["name"]).read_bytes(), f["name"]
    m1, m2 = Path(synth_delivery["member_dir"]), Path(again["member_dir"])
    for rel in [p.relative_to(m1) for p in (m1 / "product").iterdir()] + \
               [p.relative_to(m1) for p in (m1 / "calibration").glob("*.calapply.txt")] + \
               [p.relative_to(m1) for p in (m1 / "script").iterdir()]:
        assert (m1 / rel).read_bytes() == (m2 / rel).read_bytes(), rel
    c = make_spec(2, 2, 8, tmp_path)
    assert c["ebs"] != make_spec(1, 2, 8, tmp_path)["ebs"] and c["mous"] != synth_delivery["mous_uid"]
