"""What the native restore cannot do right goes to the pipeline, or stops clearly (issue 9 item 7).

Each case is the synthetic delivery with the files a real delivery of that kind
carries: hifa_renorm parameters in the manifest (Cycle 9-10), a single-dish
restore script or *jyperk*.csv, a *selfcal.json in calibration/.
"""
import pytest
from lxml import etree

from alma_regen import calibration
from alma_regen.calibration import Options
from alma_regen.casa.registry import load_registry
from alma_regen.delivery import Delivery, find_pipeline_manifest, native_restore_limits
from alma_regen.errors import CasaError, PermanentError


def add_renorm(member, apply: str):
    """hifa_renorm on the first <asdm>, as the pipeline's manifest.add_renorm writes it (stringified inputs)."""
    path = find_pipeline_manifest(member)
    tree = etree.parse(str(path))
    asdm = tree.find(".//asdm")
    etree.SubElement(asdm, "hifa_renorm", {"apply": apply, "threshold": "None", "spw": "", "excludechan": "{}",
                                           "correctATM": "False", "createcaltable": "False"})
    tree.write(str(path))
    return asdm.get("name")


def make_single_dish(member):
    restore = Delivery(member).script("restore")
    restore.write_text("h_init()\ntry:\n    hsd_restoredata(vis=['uid___A002_X1_X2'], session=['session_1'], "
                       "ocorr_mode='ao')\nfinally:\n    h_save()\n")
    return restore.name


def make_jyperk(member):
    (member / "calibration" / "member.uid___A001_X1_X2.jyperk.csv").write_text("MS,Antenna,Spwid,Polarization,"
                                                                                "Factor\n")


def make_selfcal(member):
    (member / "calibration" / "uid___A001_X1_X2.hifa_calimage.selfcal.json").write_text("{}")


CASES = {
    "renorm": (lambda m: add_renorm(m, "True"), "amplitude renormalisation"),
    "single dish": (make_single_dish, "single-dish"),
    "jyperk": (make_jyperk, "jyperk.csv"),
    "selfcal": (make_selfcal, "selfcal.json"),
}


def test_the_synthetic_delivery_is_restored_natively(member_copy):
    assert native_restore_limits(member_copy) == []
    assert calibration.plan(member_copy, Options(), load_registry(config="")).engine == "native"


def test_renorm_parameters_that_do_not_apply_leave_native(member_copy):
    add_renorm(member_copy, "False")
    assert native_restore_limits(member_copy) == []
    assert calibration.plan(member_copy, Options(), load_registry(config="")).engine == "native"


@pytest.mark.parametrize("case", list(CASES))
def test_without_a_pipeline_casa_auto_stops_saying_what_is_needed(member_copy, case):
    make, words = CASES[case]
    make(member_copy)
    with pytest.raises(CasaError) as exc:
        calibration.plan(member_copy, Options(), load_registry(config=""))
    msg = str(exc.value)
    assert words in msg and "casa-versions add-pipeline" in msg and "none is installed" in msg


@pytest.mark.parametrize("case", list(CASES))
def test_explicit_native_refuses(member_copy, case):
    make, words = CASES[case]
    make(member_copy)
    with pytest.raises(PermanentError, match=f"engine native refused: .*{words}"):
        calibration.plan(member_copy, Options(engine="native"), load_registry(config=""))


@pytest.mark.parametrize("case", list(CASES))
def test_with_a_pipeline_casa_auto_picks_scriptforpi(member_copy, case, pipeline_registry):
    make, words = CASES[case]
    make(member_copy)
    p = calibration.plan(member_copy, Options(), pipeline_registry)
    assert p.engine == "scriptforpi" and words in p.reason
    assert p.resolution.launcher.has_pipeline


def test_renorm_names_the_eb(member_copy):
    name = add_renorm(member_copy, "True")
    (reason,) = native_restore_limits(member_copy)
    assert name in reason and "wrong amplitudes" in reason


def test_every_reason_is_given(member_copy):
    for make, _ in CASES.values():
        make(member_copy)
    assert len(native_restore_limits(member_copy)) == 3  # renorm, single dish (two signs), selfcal


def test_a_pipeline_calibration_delivery_stays_on_the_pipeline(member_copy, pipeline_registry):
    Delivery(member_copy).script("restore").unlink()
    make_selfcal(member_copy)
    p = calibration.plan(member_copy, Options(), pipeline_registry)
    assert p.engine == "pipeline" and "selfcal.json" in p.reason


def test_the_forms_restore_is_the_native_engine_and_a_stranger_is_refused():
    """The DAG passes the form's choice as it is; the library names the engine once."""
    assert Options(engine="restore").engine == "native"
    assert Options(engine="pipeline").engine == "pipeline"
    with pytest.raises(PermanentError, match="calibration engine must be one of"):
        Options(engine="restored")
