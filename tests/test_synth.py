"""`alma-regen synth` makes a delivery whose right answer is known, with real CASA.

The fixture is proven right here: the delivered calibration, applied to the
raw ASDMs after restoring Pipeline_Final, recovers the truth within the
noise, and the raw data do not.
"""
import math
import re
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
    assert s["sessions"] == {"session_1": s["ebs"]}
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
    # Small: about 10 MB for 2 EBs (two 64-channel windows, cubes in product/).
    assert sum(f["size"] for f in s["files"]) < 15e6
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


def _ids(selection):
    """'0~1,3' -> [0, 1, 3]: the pipeline writes runs of ids as ranges."""
    out = []
    for part in selection.split(","):
        first, _, last = part.partition("~")
        out += range(int(first), int(last or first) + 1)
    return out


def test_delivery_files_in_the_pipeline_form(synth_delivery):
    m = Path(synth_delivery["member_dir"])
    mous_f = naming.uid_to_file(synth_delivery["mous_uid"])
    science = synth_delivery["truth"]["science_spws"]
    readme = (m / naming.readme_name(synth_delivery["mous_uid"])).read_text()
    # A modern README names no CASA version: the manifest does.
    assert "CASA version used for reduction" not in readme
    restore = (m / "script" / f"member.{mous_f}.hifa_calimage.casa_piperestorescript.py").read_text()
    vis = [naming.uid_to_file(e) for e in synth_delivery["ebs"]]
    assert restore == ("h_init()\ntry:\n"
                       f"    hifa_restoredata (vis={vis!r}, session={['session_1'] * len(vis)!r}, ocorr_mode='ca')\n"
                       "finally:\n    h_save()\n")
    imaging = (m / "script" / f"member.{mous_f}.scriptForImaging.py").read_text()
    assert "tclean(" in imaging and "interactive=True" in imaging
    ppr = parse_file(m / "script" / f"PPR_{mous_f}.xml")
    assert [e.text for e in find_all(ppr, "AsdmDiskName")] == [naming.uid_to_file(e) for e in synth_delivery["ebs"]]
    manifest = parse_file(m / "calibration" / f"{mous_f}.hifa_calimage.pipeline_manifest.xml")
    assert manifest.tag == "piperesults" and manifest.get("name") == mous_f
    assert find_all(manifest, "casaversion")[0].get("name") == synth_delivery["casa_version"]
    assert "2025.1.1.61" in find_all(manifest, "pipeline_version")[0].get("name")
    assert [n.get("num_mpi_servers") for n in find_all(manifest, "node")] == ["0"]
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
        # Pipeline intents, and the science spws only (not the 1-channel window).
        intents = [re.search(r"intent='([^']*)'", ln).group(1) for ln in lines[1:]]
        assert intents == ["PHASE,AMPLITUDE,BANDPASS", "TARGET"]
        assert all(_ids(re.search(r"spw='([^']*)'", ln).group(1)) == science for ln in lines[1:])
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
    science = synth_delivery["truth"]["science_spws"]
    for eb, checks in restored.items():
        noise = calibrated_noise(synth_delivery, eb)
        # The pipeline calibrates the science spws only (not the 1-channel window).
        rows = [r for r in checks["CORRECTED_DATA"]["rows"] if r["spw"] in science]
        assert {r["spw"] for r in rows} == set(science)
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
        # Edge channels (first and last) plus the RFI burst on the target.
        edges = 2 / synth_delivery["truth"]["spws"][0]["nchan"]
        assert all(r["flag_fraction"] >= edges for r in spw0)
        target = next(r for r in spw0 if r["field"] == "TW_Hya_synth")
        assert target["flag_fraction"] > edges
        # With the flags restored, nothing of the 40 Jy burst is left.
        assert target["max_abs"] < 2.0


def test_deterministic_for_a_seed(synth_delivery, tmp_path):
    """The same seed gives the same raw data, byte for byte; another seed another delivery.

    CASA's own tables (caltables, flag versions) carry uninitialised padding
    bytes, so those are compared by what the restore makes of them (above)."""
    from alma_regen_dev.synth import make_spec, synthesize
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


def test_the_line_is_in_the_truth_and_only_in_its_spw(synth_delivery):
    """The true model has the Gaussian line of the truth on the target, in its
    spw and channels, and spw 0 is flat (line-free continuum)."""
    import numpy as np
    line = synth_delivery["truth"]["target"]["line"]
    eb = naming.uid_to_file(synth_delivery["ebs"][0])
    model = np.load(Path(synth_delivery["truth"]["model_dir"]) / f"{eb}.model.npz")
    cal = synth_delivery["truth"]["calibrator"]["flux_jy"]

    def target_spectrum(spw):
        m = model[f"model{spw}"]
        # Target rows: far fainter than the calibrator.
        on_target = np.abs(m).mean(axis=(0, 1)) < cal / 2
        return np.abs(m[:, :, on_target].mean(axis=(0, 2)))

    spec = target_spectrum(line["spw"])
    assert int(np.argmax(spec)) == line["center_chan"]
    continuum = np.median(spec)
    # Peak above the continuum: the line's peak through the primary beam (>50 %).
    assert line["peak_jy"] * 0.5 < spec.max() - continuum < line["peak_jy"]
    assert spec[line["center_chan"] + 3 * line["fwhm_chan"]] - continuum < 0.01 * line["peak_jy"]
    flat = target_spectrum(0)
    assert flat.max() - flat.min() < 0.01 * continuum


def test_restore_script_templates():
    from alma_regen_dev.synth import restore_script
    current = restore_script(["uid___A002_X1_X2", "uid___A002_X1_X3"], ["session_1", "session_3"])
    assert current.splitlines() == [
        "h_init()", "try:",
        "    hifa_restoredata (vis=['uid___A002_X1_X2', 'uid___A002_X1_X3'], session=['session_1', 'session_3'], "
        "ocorr_mode='ca')",
        "finally:", "    h_save()"]
    old = restore_script(["uid___A002_X1_X2"], ["session_1"], "old")
    assert old.splitlines()[:2] == ["from recipes.almahelpers import fixsyscaltimes # SACM/JAO - Fixes",
                                    "__rethrow_casa_exceptions = True"]
    assert old.endswith(restore_script(["uid___A002_X1_X2"], ["session_1"]))
    for text in (current, old):
        compile(text, "restore", "exec")


def test_sessions_are_checked(tmp_path):
    from alma_regen.errors import PermanentError
    from alma_regen_dev.synth import default_sessions, make_spec
    assert default_sessions(3) == [1, 1, 3] and default_sessions(2) == [1, 1] and default_sessions(1) == [1]
    assert [e["session"] for e in make_spec(1, 3, 8, tmp_path, [2, 2, 5])["ebs"]] == ["session_2"] * 2 + ["session_5"]
    for bad in ([1, 1], [3, 1, 1], [0, 1, 1]):
        with pytest.raises(PermanentError, match="--sessions"):
            make_spec(1, 3, 8, tmp_path, bad)


def test_three_ebs_in_two_sessions_agree_everywhere(synth_delivery_3eb):
    """session_1: EB1, EB2; session_3: EB3. The restore script, the manifest, the
    PPR and the caltables tarballs all say so."""
    s = synth_delivery_3eb
    m = Path(s["member_dir"])
    mous_f = naming.uid_to_file(s["mous_uid"])
    ebs = [naming.uid_to_file(e) for e in s["ebs"]]
    assert s["sessions"] == {"session_1": s["ebs"][:2], "session_3": s["ebs"][2:]}
    restore = (m / "script" / f"member.{mous_f}.hifa_calimage.casa_piperestorescript.py").read_text()
    assert f"session={['session_1', 'session_1', 'session_3']!r}" in restore and f"vis={ebs!r}" in restore
    manifest = parse_file(m / "calibration" / f"{mous_f}.hifa_calimage.pipeline_manifest.xml")
    sessions = find_all(manifest, "session")
    assert [x.get("name") for x in sessions] == ["session_1", "session_3"]
    for x in sessions:
        listed = [a.get("name") for a in x if a.tag == "asdm"]
        assert listed == [naming.uid_to_file(e) + ".ms" for e in s["sessions"][x.get("name")]]
        caltables = [c for c in x if c.tag == "caltables"]
        assert len(caltables) == 1 and caltables[0].get("session") == x.get("name")
        assert caltables[0].get("name") == f"{mous_f}.{x.get('name')}.caltables.tgz"
        with tarfile.open(m / "calibration" / caltables[0].get("name")) as tf:
            owners = {n.split(".ms.")[0] for n in tf.getnames()}
        assert owners == {a[: -len(".ms")] for a in listed}
    ppr = (m / "script" / f"PPR_{mous_f}.xml").read_text()
    assert f"<Keyword>SESSION_1</Keyword>\n          <Value>{s['ebs'][0]} | {s['ebs'][1]}</Value>" in ppr
    assert f"<Keyword>SESSION_3</Keyword>\n          <Value>{s['ebs'][2]}</Value>" in ppr
