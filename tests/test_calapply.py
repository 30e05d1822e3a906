"""calapply.txt is parsed as data: the real form round-trips, anything hostile is refused."""
import ast
import json
import subprocess
import sys

import pytest

from alma_regen.calapply import format_applycal, format_calapply, parse_calapply
from alma_regen.casa.env import child_env
from alma_regen.errors import DeliveryError
from alma_regen.paths import casa_script

EB = "uid___A002_Xb4264b_X47af"
ABS = "/lustre/naasc/pipeline/working"

# A line as the pipeline writes it (exportdata/callibrary): absolute paths, no applymode.
REAL_LINE = (
    f"applycal(vis='{ABS}/{EB}.ms', field='J1427-4206', intent='BANDPASS', spw='17,19,21,23', "
    f"antenna='0~42', gaintable=['{ABS}/{EB}.ms.hifa_bandpass.s6_3.spw17.tbl', "
    f"'{ABS}/{EB}.ms.hifa_timegaincal.s16_1.spw17_19_21_23.solintinf.tbl'], "
    f"gainfield=['', 'nearest'], spwmap=[[], [17, 17, 17, 17]], interp=['linear,linear', 'linear'], "
    f"calwt=[False, False])"
)


def write(tmp_path, body, eb=EB):
    p = tmp_path / f"{eb}.ms.calapply.txt"
    p.write_text(body)
    return p


def test_real_form_is_parsed_with_paths_rewritten_and_pipeline_defaults(tmp_path):
    path = write(tmp_path, f"# Apply file for {EB}.ms\n{REAL_LINE}\n")
    work = tmp_path / "working"
    [call] = parse_calapply(path, work)
    assert call["vis"] == f"{work}/{EB}.ms"
    assert call["gaintable"] == [f"{work}/{EB}.ms.hifa_bandpass.s6_3.spw17.tbl",
                                 f"{work}/{EB}.ms.hifa_timegaincal.s16_1.spw17_19_21_23.solintinf.tbl"]
    assert call["spwmap"] == [[], [17, 17, 17, 17]]
    assert call["calwt"] == [False, False]
    assert call["applymode"] == "calflagstrict"
    assert call["flagbackup"] is False


def test_format_writes_the_pipeline_form_and_round_trips(tmp_path):
    # The line the pipeline wrote, parsed with the paths left where they were, formats back to itself.
    [call] = parse_calapply(write(tmp_path, REAL_LINE + "\n"), ABS)
    assert format_applycal(call) == REAL_LINE
    # A whole file written by format_calapply parses back into the same calls.
    calls = [call, dict(call, field="NGC253", intent="TARGET")]
    text = format_calapply(EB, calls)
    assert text.splitlines()[0] == f"# Apply file for {EB}.ms"
    assert parse_calapply(write(tmp_path, text), ABS) == calls


def test_format_refuses_what_the_real_form_cannot_hold(tmp_path):
    [call] = parse_calapply(write(tmp_path, REAL_LINE), ABS)
    with pytest.raises(ValueError, match="missing"):
        format_applycal({"vis": "x.ms"})
    with pytest.raises(ValueError, match="timerange"):
        format_applycal(dict(call, timerange="2024/01/01"))
    # Tuples (and numpy scalars) are written as plain literals that read back.
    line = format_applycal(dict(call, spwmap=([], (17, 17))))
    assert "spwmap=[[], [17, 17]]" in line
    assert ast.parse(line, mode="eval")


def test_header_may_be_missing_but_must_not_name_another_ms(tmp_path):
    assert len(parse_calapply(write(tmp_path, "\n" + REAL_LINE + "\n\n# a comment\n"), tmp_path)) == 1
    other = write(tmp_path, f"# Apply file for uid___A002_X1_X2.ms\n{REAL_LINE}\n")
    with pytest.raises(DeliveryError, match=r"line 1: header names"):
        parse_calapply(other, tmp_path)


HOSTILE = [
    ("import os", "not an applycal call"),
    ("os.system('touch PWNED')", "not an applycal call"),
    ("__import__('os').system('touch PWNED')", "not an applycal call"),
    (f"flagdata(vis='{EB}.ms', mode='unflag')", "not an applycal call"),
    ("applycal.__globals__", "not an applycal call"),
    (f"applycal(vis='{EB}.ms'); import os", "not a single applycal call"),
    (f"applycal(vis='{EB}.ms')(vis='x')", "not a plain applycal call"),
    (f"applycal(vis=__import__('os').system('touch PWNED'))", "vis= is not a literal"),
    (f"applycal(vis='{EB}.ms', field=fieldname)", "field= is not a literal"),
    (f"applycal(vis='{EB}.ms', field=os.sep)", "field= is not a literal"),
    (f"applycal(vis='{EB}.ms', field=f'{{x}}')", "field= is not a literal"),
    (f"applycal(vis='{EB}.ms', gaintable=[open('/etc/passwd').read()])", "gaintable= is not a literal"),
    (f"applycal('{EB}.ms')", "positional arguments"),
    (f"applycal(*['{EB}.ms'])", "positional arguments"),
    (f"applycal(vis='{EB}.ms', **{{'field': ''}})", r"'\*\*' arguments"),
    (f"applycal(vis='{EB}.ms', command='rm -rf /')", "no keyword 'command'"),
    (f"applycal(vis='{EB}.ms', field='a', field='b')", "given twice"),
    (f"applycal(vis='{EB}.ms', gaintable=['/etc/passwd'])", "outside the delivery"),
    (f"applycal(vis='{EB}.ms', gaintable=['{ABS}/uid___A002_X1_X2.ms.bp.tbl'])", "outside the delivery"),
    (f"applycal(vis='{EB}.ms', gaintable=['{ABS}/..'])", "unusable path"),
    (f"applycal(vis='{EB}.ms', gaintable=['{ABS}/'])", "unusable path"),
    (f"applycal(vis='{EB}.ms', gaintable=[3])", "list of strings"),
    ("applycal(vis='/data/uid___A002_X1_X2.ms')", "is not " + EB),
    ("applycal(vis='..')", "unusable path"),
    ("applycal(field='')", "vis= must be given"),
]


@pytest.mark.parametrize("line,why", HOSTILE, ids=[h[0][:40] for h in HOSTILE])
def test_hostile_lines_are_refused_with_file_and_line(tmp_path, monkeypatch, line, why):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, f"# Apply file for {EB}.ms\n{REAL_LINE}\n{line}\n")
    with pytest.raises(DeliveryError, match=why) as exc:
        parse_calapply(path, tmp_path / "working")
    assert str(exc.value).startswith(f"{path}: line 3: ")
    # Nothing was executed.
    assert not (tmp_path / "PWNED").exists()


def test_a_file_without_applycal_or_with_a_wrong_name_is_refused(tmp_path):
    with pytest.raises(DeliveryError, match="no applycal call"):
        parse_calapply(write(tmp_path, f"# Apply file for {EB}.ms\n"), tmp_path)
    odd = tmp_path / "calapply.txt"
    odd.write_text(REAL_LINE)
    with pytest.raises(DeliveryError, match="not a calapply file name"):
        parse_calapply(odd, tmp_path)
    with pytest.raises(DeliveryError, match="cannot read"):
        parse_calapply(tmp_path / f"{EB}.ms.calapply.txt.missing", tmp_path, eb=EB)


def test_pure_parser_runs_standalone_without_alma_regen(tmp_path):
    """Inside CASA's Python the parser is imported by path, with no alma_regen around."""
    path = write(tmp_path, REAL_LINE + "\n")
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import calapply_parse as p; "
            "print(json.dumps(p.parse_calapply(sys.argv[2], '/w'))); "
            "print(sorted(m for m in sys.modules if m.startswith(('alma_regen', 'airflow', 'casa'))))")
    out = subprocess.run([sys.executable, "-I", "-c", code, str(casa_script("calapply_parse.py").parent), str(path)],
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout.splitlines()
    assert json.loads(out[0])[0]["vis"] == f"/w/{EB}.ms"
    assert out[1] == "[]"


def test_allowed_keywords_are_those_of_casatasks_applycal(tmp_path):
    """The allow-list matches the installed casatasks (read in a child: no CASA in this process)."""
    code = "import inspect, json, casatasks; print(json.dumps(list(inspect.signature(casatasks.applycal).parameters)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env=child_env()).stdout
    params = json.loads(out.strip().splitlines()[-1])
    from alma_regen.calapply import _parser
    assert set(params) == set(_parser().APPLYCAL_KEYWORDS)
    assert set(_parser().LINE_KEYWORDS) <= set(params)


# ---------------------------------------------------------------- intents, as hifa_restoredata maps them

ALMA_STATES = ["CALIBRATE_BANDPASS#ON_SOURCE,CALIBRATE_FLUX#ON_SOURCE,CALIBRATE_PHASE#ON_SOURCE,CALIBRATE_WVR#ON_SOURCE",
               "CALIBRATE_PHASE#ON_SOURCE,CALIBRATE_WVR#ON_SOURCE", "OBSERVE_TARGET#ON_SOURCE",
               "CALIBRATE_ATMOSPHERE#OFF_SOURCE,CALIBRATE_WVR#OFF_SOURCE"]


def _p():
    from alma_regen.calapply import _parser
    return _parser()


def test_pipeline_intents_map_to_the_obs_modes_the_ms_has():
    p = _p()
    # WVR is not an intent the pipeline's applycal calibrates: dropped, as hifa_restoredata drops it.
    assert p.casa_intent("PHASE,AMPLITUDE,BANDPASS,WVR", ALMA_STATES, 2, "f") == \
        "CALIBRATE_BANDPASS#ON_SOURCE,CALIBRATE_FLUX#ON_SOURCE,CALIBRATE_PHASE#ON_SOURCE"
    assert p.casa_intent("TARGET", ALMA_STATES, 3, "f") == "OBSERVE_TARGET#ON_SOURCE"
    # Older data write '.' or '_' after the scan intent; AMPLITUDE is CALIBRATE_AMPLI there too.
    old = ["CALIBRATE_AMPLI.ON_SOURCE", "OBSERVE_TARGET_ON_SOURCE", "CALIBRATE_PHASE.ON_SOURCE"]
    assert p.casa_intent("AMPLITUDE", old, 1, "f") == "CALIBRATE_AMPLI.ON_SOURCE"
    assert p.casa_intent("TARGET,PHASE", old, 1, "f") == "CALIBRATE_PHASE.ON_SOURCE,OBSERVE_TARGET_ON_SOURCE"
    # intent='' means every intent the pipeline applies to, not the atmosphere scans.
    assert p.casa_intent("", ALMA_STATES, 1, "f").split(",") == [
        "CALIBRATE_BANDPASS#ON_SOURCE", "CALIBRATE_FLUX#ON_SOURCE", "CALIBRATE_PHASE#ON_SOURCE",
        "OBSERVE_TARGET#ON_SOURCE"]


@pytest.mark.parametrize("intent,why", [
    # hifa_restoredata looks these up among pipeline intents, finds nothing and applies nothing.
    ("CALIBRATE_BANDPASS#ON_SOURCE,CALIBRATE_PHASE#ON_SOURCE", "is an obs_mode, not a pipeline intent"),
    ("OBSERVE_TARGET#ON_SOURCE", "is an obs_mode"),
    ("PHASECAL", "unknown pipeline intent 'PHASECAL'"),
    ("WVR,ATMOSPHERE", "none of these intents is one the pipeline applies"),
    ("CHECK,POLARIZATION", "the MS has no scan with these intents.*this line would apply nothing"),
    (3, "intent= must be a string"),
])
def test_intents_that_would_apply_nothing_are_errors_naming_file_and_line(tmp_path, intent, why):
    line = REAL_LINE.replace("intent='BANDPASS'", f"intent={intent!r}")
    path = write(tmp_path, f"# Apply file for {EB}.ms\n{REAL_LINE}\n{line}\n")
    lines = _p().parse_calapply_lines(path, tmp_path)
    assert [n for n, _ in lines] == [2, 3]
    assert _p().for_casa(lines[0][1], ALMA_STATES, lines[0][0], path)["intent"] == "CALIBRATE_BANDPASS#ON_SOURCE"
    with pytest.raises(_p().CalapplyError, match=why) as exc:
        _p().for_casa(lines[1][1], ALMA_STATES, lines[1][0], path)
    assert str(exc.value).startswith(f"{path}, line 3: ")


def test_for_casa_selects_cross_correlations_and_keeps_the_rest():
    [(_, call)] = _p().parse_calapply_text(REAL_LINE, "/w", EB)
    out = _p().for_casa(call, ALMA_STATES, 1, "f")
    assert out["antenna"] == "*&*" and out["intent"] == "CALIBRATE_BANDPASS#ON_SOURCE"
    assert {k: v for k, v in out.items() if k not in ("antenna", "intent")} == \
        {k: v for k, v in call.items() if k not in ("antenna", "intent")}
    assert call["intent"] == "BANDPASS", "the parsed line itself is left as read"


def test_science_spws_as_the_pipeline_picks_them():
    nchan = {0: 64, 1: 64, 2: 4, 3: 1, 4: 128, 5: 64}
    modes = {0: ["OBSERVE_TARGET#ON_SOURCE"], 1: ["CALIBRATE_PHASE#ON_SOURCE,CALIBRATE_WVR#ON_SOURCE"],
             2: ["OBSERVE_TARGET#ON_SOURCE"], 3: ["OBSERVE_TARGET#ON_SOURCE"],
             4: ["CALIBRATE_ATMOSPHERE#OFF_SOURCE"], 5: []}
    assert _p().science_spws(nchan, modes) == [0, 1]


# ---------------------------------------------------------------- paths the engine reads (issue 11, Why 4)

@pytest.mark.parametrize("extra,why", [
    ("docallib=True, callib='/etc/cal.lib'", "docallib"),
    ("docallib=True", "docallib"),
    ("docallib=1, callib='cal.lib'", "docallib"),
    ("callib='/data/other/uid___A002_X1_X2.ms.bp.tbl'", "callib"),
    ("msselect=\"ANTENNA1 IN [select rowid() from '/etc/passwd']\"", "msselect"),
])
def test_callibrary_and_taql_that_read_other_paths_are_refused(tmp_path, extra, why):
    """A callibrary names its caltables by its own paths, outside the rewriting to the working
    directory (a restore applied a caltable from outside the delivery); a TaQL msselect can
    open any table by path. The pipeline's lines have neither."""
    line = REAL_LINE[:-1] + f", {extra})"
    path = write(tmp_path, f"# Apply file for {EB}.ms\n{line}\n")
    with pytest.raises(DeliveryError, match=f"line 2: .*{why}"):
        parse_calapply(path, tmp_path / "working")


def test_callibrary_off_is_accepted(tmp_path):
    line = REAL_LINE[:-1] + ", docallib=False, callib='', msselect='')"
    calls = parse_calapply(write(tmp_path, line + "\n"), tmp_path / "w")
    assert calls[0]["docallib"] is False and calls[0]["gaintable"][0].startswith(str(tmp_path / "w") + "/")
