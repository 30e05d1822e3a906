"""The native restore equals the REAL pipeline's hifa_restoredata, bit for bit.

On the synthetic delivery (the real formats: pipeline intents in calapply.txt,
per-session caltables, the pipeline manifest), per EB and science spw:
CORRECTED_DATA of the native restore differs from the real restore's by less
than 1e-6 (relative, element by element) and no FLAG differs. And the real
restore did calibrate (CORRECTED_DATA differs from DATA on every science spw):
the proof the synthetic delivery is one the real pipeline restores.
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


def compare(ours: Path, theirs: Path, eb: str, workdir: Path) -> dict:
    f = naming.uid_to_file(eb)
    result = workdir / f"compare.{f}.json"
    run_casa_python(TESTS / "casa" / "compare_restores.py", ours / f"{f}.ms", theirs / f"{f}.ms", result,
                    cwd=workdir)
    return json.loads(result.read_text())


def test_native_restore_equals_hifa_restoredata(native_restored, pipeline_restored, synth_delivery_3eb, tmp_path):
    # 3 EBs in 2 sessions (session_1 holds 2): per-session caltables, as real deliveries have them.
    assert len(set(synth_delivery_3eb["sessions"])) == 2 and len(synth_delivery_3eb["ebs"]) == 3
    for eb in synth_delivery_3eb["ebs"]:
        out = compare(native_restored, pipeline_restored, eb, tmp_path)
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
