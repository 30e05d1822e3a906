"""The native split, as scriptForPI splits (issue 10, item 1): which spw ids, decided how.

What the real scriptForPI copies do (read through the code search, never copied):
  v1.15 (2015)        split(vis, outputvis, spw=<science>)            -> ids renumbered from 0
  v1.23, v1.34        mstransform(..., spw=<science>, reindex=False)   -> the original ids
  v2.5 (2023)         mstransform(..., reindex=<science ids differ between the EBs>)
with the science spws = msmd.spwsforintent('OBSERVE_TARGET*') with more than 4 channels,
every field, the corrected column. Each case below states the version, the EBs' science
spws and the decision it must give. The ASDMs here are hand-made tables (only their
spectral setup matters), so no CASA is needed; the CASA tests that check the prediction
against the imported MS and the split against scriptForPI's are in test_restore_vs_pipeline.py.
"""
import pytest

from alma_regen import asdm, calibration, naming
from alma_regen.errors import DeliveryError

MOUS_F = "uid___A001_X1_X2"
EB1, EB2 = "uid://A002/Xb4264b/X47af", "uid://A002/Xb4264b/X5c1"

# A real ALMA layout: spw 0 the WVR window (4 channels), then per baseband a full-resolution
# window and its 1-channel average, the science windows on odd ids from 17 on as in many
# Cycle 4-10 EBs; an unused window listed first in the table goes last in the MS.
ALMA_LIKE = [("SpectralWindow_0", 4)] + [(f"SpectralWindow_{i}", 1 if i % 2 == 0 else 128) for i in range(1, 24)]


def _array(ids):
    return f"1 {len(ids)} " + " ".join(ids)


def write_asdm(path, windows, target_dds, cal_dds=None, unused_first=None):
    """An ASDM's spectral tables: `windows` [(spw id, nchan)], one DataDescription per window
    (except `unused_first`, a window no DataDescription uses, listed first in the table); a
    calibrator scan using `cal_dds` and a target scan using `target_dds` (indices into windows)."""
    path.mkdir(parents=True)
    rows = ([f"<row><spectralWindowId> {unused_first} </spectralWindowId><numChan> 64 </numChan></row>"]
            if unused_first else [])
    rows += [f"<row><spectralWindowId> {s} </spectralWindowId><numChan> {n} </numChan></row>" for s, n in windows]
    (path / "SpectralWindow.xml").write_text(f"<SpectralWindowTable>{''.join(rows)}</SpectralWindowTable>")
    dds = "".join(f"<row><dataDescriptionId> DataDescription_{i} </dataDescriptionId>"
                  f"<spectralWindowId> {s} </spectralWindowId></row>" for i, (s, _) in enumerate(windows))
    (path / "DataDescription.xml").write_text(f"<DataDescriptionTable>{dds}</DataDescriptionTable>")
    configs = {"ConfigDescription_0": cal_dds if cal_dds is not None else list(range(len(windows))),
               "ConfigDescription_1": target_dds}
    cfg = "".join(f"<row><configDescriptionId> {c} </configDescriptionId><dataDescriptionId> "
                  f"{_array([f'DataDescription_{i}' for i in d])} </dataDescriptionId></row>" for c, d in configs.items())
    (path / "ConfigDescription.xml").write_text(f"<ConfigDescriptionTable>{cfg}</ConfigDescriptionTable>")
    (path / "Scan.xml").write_text(
        "<ScanTable><row><scanNumber> 1 </scanNumber><scanIntent> 1 2 CALIBRATE_BANDPASS CALIBRATE_PHASE "
        "</scanIntent></row><row><scanNumber> 2 </scanNumber><scanIntent> 1 1 OBSERVE_TARGET </scanIntent></row>"
        "</ScanTable>")
    (path / "Main.xml").write_text(
        "<MainTable><row><scanNumber> 1 </scanNumber><configDescriptionId> ConfigDescription_0 "
        "</configDescriptionId></row><row><scanNumber> 2 </scanNumber><configDescriptionId> ConfigDescription_1 "
        "</configDescriptionId></row></MainTable>")
    return path


def member(tmp_path, version, asdms):
    """member/ with a scriptForPI whose $Id line names `version` (None: no scriptForPI) and
    raw/<EB>.asdm.sdm made by `asdms` {EB: callable(path)}."""
    m = tmp_path / f"member.{MOUS_F}"
    (m / "script").mkdir(parents=True)
    (m / "raw").mkdir()
    if version:
        (m / "script" / f"member.{MOUS_F}.scriptForPI.py").write_text(
            f"# ALMA Data Reduction Script\n# $Id: scriptForPI.py,v {version} 2023/10/03 16:56:39 x Exp $\n")
    for eb, make in asdms.items():
        make(m / "raw" / naming.asdm_dir(eb))
    return m


def same_setup(path):
    # Science: the 128-channel windows used in the target scan (ids 17, 19, 21, 23).
    return write_asdm(path, ALMA_LIKE, target_dds=[0, 17, 18, 19, 20, 21, 22, 23])


def other_setup(path):
    # The same windows observed with two fewer spectral windows before them (ids 15, 17, 19, 21).
    return write_asdm(path, ALMA_LIKE[:1] + ALMA_LIKE[3:], target_dds=[0, 15, 16, 17, 18, 19, 20, 21])


# ---------------------------------------------------------------- the science spws of an ASDM

def test_science_spws_of_an_alma_like_asdm(tmp_path):
    a = same_setup(tmp_path / "a.asdm.sdm")
    # OBSERVE_TARGET data, more than 4 channels: not the WVR window (4), not the averages (1),
    # not the windows only the calibrator scan used.
    assert asdm.science_spws(a) == [17, 19, 21, 23]


def test_a_window_no_data_description_uses_goes_last(tmp_path):
    # importasdm numbers first the windows a DataDescription uses, in the table's order, then
    # the others (the pipeline's tablereader mapping): the unused first row shifts nothing.
    a = write_asdm(tmp_path / "a.asdm.sdm", [("SpectralWindow_1", 4), ("SpectralWindow_2", 64),
                                             ("SpectralWindow_3", 64)], target_dds=[1, 2],
                   unused_first="SpectralWindow_0")
    assert asdm.ms_spw_ids(a) == {"SpectralWindow_1": 0, "SpectralWindow_2": 1, "SpectralWindow_3": 2,
                                  "SpectralWindow_0": 3}
    assert asdm.science_spws(a) == [1, 2]


def test_an_asdm_without_its_spectral_tables_is_an_error(tmp_path):
    a = same_setup(tmp_path / "a.asdm.sdm")
    (a / "ConfigDescription.xml").unlink()
    with pytest.raises(DeliveryError, match="ConfigDescription.xml: missing"):
        asdm.science_spws(a)


def test_a_main_row_naming_an_unknown_data_description_is_an_error(tmp_path):
    a = write_asdm(tmp_path / "a.asdm.sdm", [("SpectralWindow_0", 64)], target_dds=[3])
    with pytest.raises(DeliveryError, match="DataDescription_3 names no spectral window"):
        asdm.science_spws(a)


# ---------------------------------------------------------------- the decision, per version

@pytest.mark.parametrize("version,setups,reindex,rule", [
    # v2.5: the EBs' science spws agree (17,19,21,23 twice): ids kept.
    ("2.5", (same_setup, same_setup), False, "if-different"),
    # v2.5: they differ (17,19,21,23 vs 15,17,19,21): renumbered from 0.
    ("2.5", (same_setup, other_setup), True, "if-different"),
    # No version readable (no scriptForPI): the newest read rules, v2.5's.
    (None, (same_setup, other_setup), True, "if-different"),
    # A version newer than every read one: v2.5's rules.
    ("2.9", (same_setup, same_setup), False, "if-different"),
    # v1.34 and v1.23: mstransform(reindex=False), even when the EBs differ.
    ("1.34", (same_setup, other_setup), False, "never"),
    ("1.23", (same_setup, same_setup), False, "never"),
    # v2.0 (never read) lies between v1.34 and v2.5: the newer read one, v2.5, decides.
    ("2.0", (same_setup, other_setup), True, "if-different"),
    # v1.15 (and older): split() renumbers always, even when the EBs agree.
    ("1.15", (same_setup, same_setup), True, "always"),
])
def test_the_split_reindex_follows_the_delivery_scriptforpi(tmp_path, version, setups, reindex, rule):
    m = member(tmp_path, version, dict(zip((EB1, EB2), setups)))
    out = calibration.split_reindex(m, [EB1, EB2])
    assert (out["reindex"], out["rule"]) == (reindex, rule), out
    assert out["scriptforpi_version"] == (f"v{version}" if version else None)
    assert ("the delivery's" if version else "the newest read") in out["decided_by"]
    if rule == "if-different":
        # The spws it compared, per EB, for the record (and checked by each restore).
        assert out["science_spws"][naming.uid_to_file(EB1)] == [17, 19, 21, 23]
    words = "renumbered from 0" if reindex else "original spw ids kept"
    assert words in out["why"]


def test_a_missing_asdm_under_the_v25_rule_is_a_clear_error(tmp_path):
    m = member(tmp_path, "2.5", {EB1: same_setup})
    with pytest.raises(DeliveryError, match=r"X5c1.asdm.sdm.*missing.*stage the raw data"):
        calibration.split_reindex(m, [EB1, EB2])


def test_the_v134_rule_needs_no_asdm(tmp_path):
    # reindex=False whatever the EBs hold: nothing to read.
    m = member(tmp_path, "1.34", {})
    assert calibration.split_reindex(m, [EB1, EB2])["reindex"] is False


# ---------------------------------------------------------------- the check of a split (no CASA)

def result(split_spws, fields=("J1924-2914", "TW_Hya_synth"), spw_rows=3, split_rows=3, sub=("ASDM_SBSUMMARY",)):
    summary = {"vis": "x.ms", "columns": ["DATA", "CORRECTED_DATA"], "fields": ["J1924-2914", "TW_Hya_synth"],
               "target_fields": ["TW_Hya_synth"], "spws": {"0": 64, "1": 64, "2": 1}}
    return {"summary": summary, "science_spws": [0, 1], "split": "x.ms.split.cal",
            "split_summary": {"columns": ["DATA"], "fields": list(fields), "spws": {str(s): 64 for s in split_spws}},
            "spw_rows": spw_rows, "split_spw_rows": split_rows, "asdm_subtables": ["ASDM_SBSUMMARY"],
            "split_asdm_subtables": list(sub)}


def test_check_restored_accepts_scriptforpis_split():
    calibration.check_restored(result([0, 1]), split=True, reindex=False)
    calibration.check_restored(result([0, 1], split_rows=2), split=True, reindex=True)


@pytest.mark.parametrize("bad,reindex,why", [
    (dict(fields=("TW_Hya_synth",)), False, "keeps every field"),
    (dict(split_rows=2), False, "keeps every row"),
    (dict(sub=()), False, "lost the subtables ASDM_SBSUMMARY"),
])
def test_check_restored_refuses_another_split(bad, reindex, why):
    from alma_regen.errors import CasaError
    with pytest.raises(CasaError, match=why):
        calibration.check_restored(result([0, 1], **bad), split=True, reindex=reindex)


def test_check_restored_refuses_ids_against_the_decision():
    from alma_regen.errors import CasaError
    r = result([0, 1])
    r["science_spws"] = [17, 19]
    r["summary"]["spws"] = {"17": 64, "19": 64}
    with pytest.raises(CasaError, match=r"expected \[17, 19\].*under their own ids"):
        calibration.check_restored(r, split=True, reindex=False)
    calibration.check_restored(r, split=True, reindex=True)


# ---------------------------------------------------------------- with real CASA

def test_a_reindexed_split_and_a_wrong_prediction_with_real_casa(member_copy):
    """v2.5 when the EBs differ: the split's science spws renumbered 0..n-1 (SPECTRAL_WINDOW then
    holds only them), every field kept. And an MS whose science spws are not those the ASDM's
    tables said is refused: the reindex was decided on them."""
    from alma_regen.casa.registry import load_registry
    from alma_regen.calibration import Options
    from alma_regen.errors import CasaError as _CasaError
    p = calibration.plan(member_copy, Options(engine="native"), load_registry())
    calibration.prepare_layout(member_copy, p.ebs)
    eb = p.ebs[0]
    f = naming.uid_to_file(eb)
    assert p.split_rule["science_spws"][f] == [0, 1]  # read from the ASDM, before any import
    rule = dict(p.split_rule, reindex=True)
    rec = calibration.restore_eb(member_copy, eb, split=True, resolution=p.resolution, split_rule=rule)
    assert rec["reindex"] is True and rec["science_spws"] == [0, 1]
    import json
    result = json.loads((member_copy / "calibrated" / "working" / f"{f}.restore.result.json").read_text())
    assert sorted(map(int, result["split_summary"]["spws"])) == [0, 1]
    assert result["split_spw_rows"] == 2 and result["spw_rows"] == 3
    assert sorted(result["split_summary"]["fields"]) == sorted(result["summary"]["fields"])
    wrong = dict(p.split_rule, science_spws={f: [17, 19]})
    with pytest.raises(_CasaError, match=r"science spws \[0, 1\], but its ASDM's tables said \[17, 19\]"):
        calibration.restore_eb(member_copy, eb, split=True, resolution=p.resolution, split_rule=wrong)
