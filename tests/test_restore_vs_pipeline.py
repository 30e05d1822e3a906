"""The native restore equals the REAL pipeline's hifa_restoredata, and its split scriptForPI's.

One run of the delivery's scriptForPI under a pipeline CASA (`restore --engine scriptforpi
--dosplit`, SPACESAVING 0: the real hifa_restoredata, then scriptForPI's split) on a copy of
the 3-EB, 2-session synthetic delivery, and one native restore of another copy:

- per EB and science spw, the CORRECTED_DATA of the native <EB>.ms differs from the real
  restore's by less than 1e-6 (relative, element by element) and no FLAG differs; and the
  real restore did calibrate (CORRECTED_DATA differs from DATA on every science spw): the
  proof the synthetic delivery is one the real pipeline restores;
- per EB, the native <EB>.ms.split.cal is scriptForPI's: the same fields (all of them, not
  only the target), the same spw ids with data and SPECTRAL_WINDOW rows (no reindex: the
  EBs' science spws agree), the same ASDM_* subtables and columns, and the same DATA and
  FLAG row by row.
"""
import json
import shutil
from pathlib import Path

import pytest

from alma_regen import calibration, naming
from alma_regen.calibration import Options
from fixtures_synth import TESTS, run_casa_python

pytestmark = pytest.mark.casa


@pytest.fixture(scope="module")
def native_restored(synth_delivery_3eb, tmp_path_factory):
    src = Path(synth_delivery_3eb["member_dir"])
    member = tmp_path_factory.mktemp("native-restore") / src.name
    shutil.copytree(src, member, symlinks=True)
    calibration.calibrate(member, Options(engine="native"))
    return member / "calibrated" / "working"


@pytest.fixture(scope="module")
def scriptforpi_restored(synth_delivery_3eb, pipeline_registry, tmp_path_factory):
    """calibrated/ of the delivery's scriptForPI with the real pipeline, DOSPLIT and SPACESAVING 0
    (working/<EB>.ms kept beside the <EB>.ms.split.cal folders)."""
    src = Path(synth_delivery_3eb["member_dir"])
    member = tmp_path_factory.mktemp("scriptforpi-restore") / src.name
    shutil.copytree(src, member, symlinks=True)
    calibration.calibrate(member, Options(engine="scriptforpi", dosplit=True, spacesaving=0),
                          registry=pipeline_registry)
    return member / "calibrated"


def compare(ours: Path, theirs: Path, eb: str, workdir: Path, *mode) -> dict:
    """tests/casa/compare_restores.py (mode "--split": two <EB>.ms.split.cal)."""
    f = naming.uid_to_file(eb)
    result = workdir / f"compare{''.join(mode)}.{f}.json"
    run_casa_python(TESTS / "casa" / "compare_restores.py", *mode, ours, theirs, result, cwd=workdir)
    return json.loads(result.read_text())


def test_native_restore_equals_hifa_restoredata(native_restored, scriptforpi_restored, synth_delivery_3eb,
                                                tmp_path):
    # 3 EBs in 2 sessions (session_1 holds 2): per-session caltables, as real deliveries have them.
    assert len(set(synth_delivery_3eb["sessions"])) == 2 and len(synth_delivery_3eb["ebs"]) == 3
    for eb in synth_delivery_3eb["ebs"]:
        f = naming.uid_to_file(eb)
        out = compare(native_restored / f"{f}.ms", scriptforpi_restored / "working" / f"{f}.ms", eb, tmp_path)
        assert "mismatch" not in out, out
        assert out["science_spws"] and sorted(out["spws"]) == sorted(map(str, out["science_spws"])), out
        for spw, r in out["spws"].items():
            assert "mismatch" not in r, (eb, spw, r)
            print(f"{eb} spw {spw}: {r['rows']} rows, max relative difference {r['max_rel_corrected']:.3g}, "
                  f"{r['flag_differences']} flag differences, real restore vs DATA {r['theirs_corrected_vs_data']:.3g}")
            # The real restore calibrated this spw: CORRECTED_DATA is not DATA.
            assert r["theirs_corrected_vs_data"] > 1e-3, (eb, spw, r)
            assert r["max_rel_corrected"] < 1e-6, (eb, spw, r)
            assert r["flag_differences"] == 0, (eb, spw, r)


def test_native_split_equals_scriptforpis(native_restored, scriptforpi_restored, synth_delivery_3eb, tmp_path):
    """Expected (the synthetic scriptForPI states no version: v2.5's rule; every EB's science
    spws are 0,1): no reindex, spws 0 and 1 under their own ids, SPECTRAL_WINDOW keeps its 3
    rows, both fields, the ASDM_* subtables."""
    summary = json.loads((native_restored.parent / "calibration.json").read_text())
    assert summary["plan"]["reindex"] is False and summary["plan"]["split_rule"]["rule"] == "if-different"
    for eb in synth_delivery_3eb["ebs"]:
        f = naming.uid_to_file(eb)
        theirs = scriptforpi_restored / f"{f}.ms.split.cal"
        assert theirs.is_dir() and not theirs.is_symlink()
        out = compare(native_restored / f"{f}.ms.split.cal", theirs, eb, tmp_path, "--split")
        assert "mismatch" not in out, out
        ours, real = out["ours"], out["theirs"]
        assert ours == real, (eb, ours, real)
        assert real["fields"] == ["J1924-2914", "TW_Hya_synth"] and real["spws"] == [0, 1] and real["spw_rows"] == 3
        assert "ASDM_SBSUMMARY" in real["asdm_subtables"] and "CORRECTED_DATA" not in real["columns"]
        assert sorted(out["spws"]) == ["0", "1"]
        for spw, r in out["spws"].items():
            assert "mismatch" not in r, (eb, spw, r)
            assert r["max_rel_data"] < 1e-6 and r["flag_differences"] == 0, (eb, spw, r)
