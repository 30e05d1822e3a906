"""Read an ALMA pipeline `<EB>.ms.calapply.txt` as data, never as code.

The pipeline writes one `applycal(...)` call per (field, spw, antenna)
selection after a header line, and itself `eval`s those lines on restore. A
delivery comes from outside, so here each line is parsed with `ast` and only a
plain call of the name `applycal` with keyword arguments whose values are
literals is accepted; anything else (an `import os` line, another task, a
name, a call, an attribute, an f-string, a positional or `**` argument, a
keyword applycal does not have) is refused with the file and line number.

Format (pipeline source, exportdata/callibrary)::

    # Apply file for uid___A002_Xb4264b_X47af.ms
    applycal(vis='/abs/path/uid___A002_Xb4264b_X47af.ms', field='...', intent='...', spw='...',
             antenna='...', gaintable=[...], gainfield=[...], spwmap=[[...], ...], interp=[...], calwt=[...])

(each call on a single line). Decisions:
- the header line may be missing (the EB is known from the file name), but a
  header naming another MS is refused: the file was mixed up;
- blank lines and `#` comments are skipped; every other line must be an
  applycal call; a file without any applycal call is refused, since applying
  nothing would pass uncalibrated data off as calibrated;
- every path is rewritten to the working directory by its basename, as
  hifa_restoredata does: `vis` must be `<EB>.ms` and every caltable must start
  with `<EB>.ms.` (the caltables tgz members are named so), which also keeps a
  path such as `/etc/passwd` or `..` out. With the EB's `session` given, a
  caltable of the session may also be named: `<session>_<name>.ms.<table>`, as
  hifa_polcal names the tables it solves on the session's concatenated MS
  (`session_1_polcalib.ms.hifa_polcal.s20_4.spw0_1.solintinf_5MHz.pcal.tbl`);
  hifa_restoredata unpacks every member of the session's tarball that starts
  with the session's name. Those are read from `<EB>.ms.session_caltables/`
  (SESSION_TABLES: each EB its own copy, so that the EBs of one session can be
  restored side by side);
- `docallib=True` and a non-empty `callib=` are refused: a CASA callibrary
  names its caltables by its own paths, which the rewriting above never sees
  (a restore applied a caltable from outside the delivery through one); a
  non-empty `msselect=` is refused too, since TaQL can open any table by path.
  The pipeline's lines carry none of them. `docallib=False`, `callib=''` and
  `msselect=''` (the defaults) are accepted;
- the pipeline's applycal defaults are added (applymode='calflagstrict',
  flagbackup=False) unless the line sets them;
- `intent=` holds pipeline intents (PHASE, TARGET, ...), which CASA's applycal
  does not know: `for_casa` maps them to the obs_modes the MS has, as
  hifa_restoredata does, and selects cross-correlations as its applycal does.
  An obs_mode written in `intent=` is refused: hifa_restoredata looks intents
  up among pipeline intents only and would apply nothing for that line.

This file runs in two places: inside CASA's Python (the native restore script
of include/casa_scripts/ imports it by path) and in the Airflow worker through
the thin wrapper alma_regen.calapply, which turns CalapplyError into a
DeliveryError. So it is pure standard library: it must not import airflow,
alma_regen or CASA.
"""
import ast
import os

SUFFIX = ".ms.calapply.txt"
HEADER = "# Apply file for "
# Where the native restore unpacks an EB's copy of its session's tables: <EB>.ms.<SESSION_TABLES>/.
SESSION_TABLES = "session_caltables"
# hifa_restoredata applies with parang=True when any caltable to apply was made by hifa_polcal
# (PIPE-1973: '.hifa_polcal.' in its name; hifa/tasks/restoredata/almarestoredata.py).
POLCAL_MARK = ".hifa_polcal."
# The keywords of casatasks.applycal (6.7): nothing else is accepted.
APPLYCAL_KEYWORDS = frozenset((
    "vis", "field", "spw", "intent", "selectdata", "timerange", "uvrange", "antenna", "scan",
    "observation", "msselect", "docallib", "callib", "gaintable", "gainfield", "interp", "spwmap",
    "calwt", "parang", "applymode", "flagbackup",
))
# The pipeline's applycal defaults, which the file leaves out.
PIPELINE_DEFAULTS = {"applymode": "calflagstrict", "flagbackup": False}
# The keywords of a pipeline line, in the pipeline's order (format_applycal).
LINE_KEYWORDS = ("vis", "field", "intent", "spw", "antenna", "gaintable", "gainfield", "spwmap", "interp", "calwt")


class CalapplyError(ValueError):
    """A calapply.txt that is not what the pipeline writes."""

    def __init__(self, path, lineno, message):
        self.path = str(path)
        self.lineno = lineno
        self.message = message
        where = f"{path}, line {lineno}" if lineno else str(path)
        super().__init__(f"{where}: {message}")


def eb_of(path) -> str:
    """`.../uid___A002_X1_X2.ms.calapply.txt` -> `uid___A002_X1_X2`."""
    name = os.path.basename(str(path))
    if not name.endswith(SUFFIX) or len(name) == len(SUFFIX):
        raise CalapplyError(path, 0, f"not a calapply file name (expected <EB>{SUFFIX})")
    return name[: -len(SUFFIX)]


def parse_calapply(path, workdir, eb=None, session=None) -> list:
    """The applycal keyword dicts of the file at `path`, paths under `workdir`."""
    return [kwargs for _, kwargs in parse_calapply_lines(path, workdir, eb, session)]


def is_session_table(name, session) -> bool:
    """A caltable of the session itself (solved on its concatenated MS): `<session>_<name>.ms.<table>`."""
    if not session or not name.startswith(session + "_"):
        return False
    ms, dot, table = name[len(session) + 1:].partition(".ms.")
    return bool(dot and table and ms and "/" not in name)


def polcal_tables(calls) -> list:
    """The caltables of these calls that hifa_polcal made: when there is one, hifa_restoredata
    applies every line of every MS with parang=True."""
    return sorted({os.path.basename(t) for c in calls for t in c.get("gaintable", [])
                   if POLCAL_MARK in os.path.basename(t)})


def parse_calapply_lines(path, workdir, eb=None, session=None) -> list:
    """(line number, applycal keyword dict) of every call, so that later checks can name the line."""
    eb = eb or eb_of(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CalapplyError(path, 0, f"cannot read: {exc}") from None
    return parse_calapply_text(text, workdir, eb, path, session)


def parse_calapply_text(text, workdir, eb, path="<calapply>", session=None) -> list:
    calls = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            _check_header(line, lineno, eb, path)
            continue
        if not line.startswith("applycal("):
            raise CalapplyError(path, lineno, f"not an applycal call: {_short(line)}")
        calls.append((lineno, _parse_line(line, lineno, workdir, eb, path, session)))
    if not calls:
        raise CalapplyError(path, 0, "no applycal call: nothing would be calibrated")
    return calls


def _check_header(line, lineno, eb, path):
    if line.startswith(HEADER):
        named = line[len(HEADER):].strip()
        if named != f"{eb}.ms":
            raise CalapplyError(path, lineno, f"header names {named!r}, but this is the file of {eb}.ms")


def _parse_line(line, lineno, workdir, eb, path, session=None) -> dict:
    try:
        tree = ast.parse(line, mode="eval")
    except SyntaxError as exc:
        raise CalapplyError(path, lineno, f"not a single applycal call ({exc.msg}): {_short(line)}") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "applycal"):
        raise CalapplyError(path, lineno, f"not a plain applycal call: {_short(line)}")
    if call.args:
        raise CalapplyError(path, lineno, "positional arguments are not allowed; applycal lines use keywords only")
    kwargs = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise CalapplyError(path, lineno, "'**' arguments are not allowed")
        if kw.arg not in APPLYCAL_KEYWORDS:
            raise CalapplyError(path, lineno, f"applycal has no keyword {kw.arg!r}")
        if kw.arg in kwargs:
            raise CalapplyError(path, lineno, f"keyword {kw.arg!r} given twice")
        try:
            kwargs[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise CalapplyError(path, lineno, f"{kw.arg}= is not a literal: {_short(ast.unparse(kw.value))}") from None
    _refuse_other_paths(kwargs, lineno, path)
    _rewrite_paths(kwargs, lineno, workdir, eb, path, session)
    for key, value in PIPELINE_DEFAULTS.items():
        kwargs.setdefault(key, value)
    return kwargs


def _refuse_other_paths(kwargs, lineno, path):
    # Only the defaults, exactly: any other value makes applycal read files by a path
    # of the delivery's choosing (see the module docstring).
    if kwargs.get("docallib", False) is not False:
        raise CalapplyError(path, lineno, f"docallib={kwargs['docallib']!r} is refused: a callibrary names caltables "
                                          "by its own paths, outside the delivery's working directory")
    if kwargs.get("callib", "") != "":
        raise CalapplyError(path, lineno, f"callib={_short(repr(kwargs['callib']))} is refused: a callibrary names "
                                          "caltables by its own paths, outside the delivery's working directory")
    if kwargs.get("msselect", "") != "":
        raise CalapplyError(path, lineno, f"msselect={_short(repr(kwargs['msselect']))} is refused: TaQL can open "
                                          "any table by path, and the pipeline's lines never use it")


def _rewrite_paths(kwargs, lineno, workdir, eb, path, session=None):
    vis = kwargs.get("vis")
    if not isinstance(vis, str):
        raise CalapplyError(path, lineno, "vis= must be given as a string")
    if _basename(vis, lineno, path) != f"{eb}.ms":
        raise CalapplyError(path, lineno, f"vis {vis!r} is not {eb}.ms")
    kwargs["vis"] = os.path.join(str(workdir), f"{eb}.ms")
    tables = kwargs.get("gaintable", [])
    if isinstance(tables, str):
        tables = [tables]
    if not isinstance(tables, (list, tuple)) or not all(isinstance(t, str) for t in tables):
        raise CalapplyError(path, lineno, "gaintable= must be a list of strings")
    rewritten = []
    for table in tables:
        name = _basename(table, lineno, path)
        # Caltables come from the session's tgz: the EB's own start with <EB>.ms., the
        # session's with <session>_ (read from this EB's copy of them).
        if is_session_table(name, session):
            rewritten.append(os.path.join(str(workdir), f"{eb}.ms.{SESSION_TABLES}", name))
            continue
        if not name.startswith(f"{eb}.ms.") or name == f"{eb}.ms.":
            also = f" nor of its session {session}" if session else ""
            raise CalapplyError(path, lineno, f"caltable {table!r} is not a caltable of {eb}.ms{also} "
                                              "(outside the delivery)")
        rewritten.append(os.path.join(str(workdir), name))
    if "gaintable" in kwargs:
        kwargs["gaintable"] = rewritten


def _basename(p, lineno, path) -> str:
    # The last "/" component must be a plain file name: not empty, ".", ".." or a Windows path.
    name = p.rsplit("/", 1)[-1]
    if name in ("", ".", "..") or "\\" in name or "\0" in name:
        raise CalapplyError(path, lineno, f"unusable path {p!r}")
    return name


# ---------------------------------------------------------------- intents
# calapply.txt holds pipeline intents; CASA's applycal selects on the obs_modes
# of the MS's STATE table. Which obs_mode means which pipeline intent is the
# ALMA convention (pipeline/domain/state.py); the correlator writes the
# separator after the scan intent as '#', older data also as '.' or '_'.
_SEPARATED = {
    "CALIBRATE_POLARIZATION": "POLARIZATION", "CALIBRATE_POL_ANGLE": "POLANGLE",
    "CALIBRATE_POL_LEAKAGE": "POLLEAKAGE", "CALIBRATE_BANDPASS": "BANDPASS",
    "CALIBRATE_AMPLI": "AMPLITUDE", "CALIBRATE_FLUX": "AMPLITUDE", "CALIBRATE_PHASE": "PHASE",
    "CALIBRATE_TARGET": "TARGET", "CALIBRATE_POINTING": "POINTING", "CALIBRATE_FOCUS": "FOCUS",
    "CALIBRATE_WVR": "WVR", "CALIBRATE_ATMOSPHERE": "ATMOSPHERE", "CALIBRATE_SIDEBAND_RATIO": "SIDEBAND",
    "CALIBRATE_DELAY": "CHECK", "OBSERVE_CHECK_SOURCE": "CHECK", "OBSERVE_TARGET": "TARGET",
}
_OFF_SOURCE = {"CALIBRATE_ATMOSPHERE": "ATMOSPHERE", "CALIBRATE_SIDEBAND_RATIO": "SIDEBAND",
               "OBSERVE_TARGET": "REFERENCE"}
_SINGLE = {"CALIBRATE_ATMOSPHERE#AMBIENT": "ATMOSPHERE", "CALIBRATE_ATMOSPHERE#HOT": "ATMOSPHERE",
           "CALIBRATE_ATMOSPHERE#TEST": "ATMOSPHERE", "CALIBRATE_DIFFGAIN#REFERENCE": "DIFFGAINREF",
           "CALIBRATE_DIFFGAIN#ON_SOURCE": "DIFFGAINSRC"}


def _obs_mode_table() -> dict:
    table = dict(_SINGLE)
    for stems, side in ((_SEPARATED, "ON_SOURCE"), (_OFF_SOURCE, "OFF_SOURCE")):
        for stem, intent in stems.items():
            for sep in "#._":
                table[f"{stem}{sep}{side}"] = intent
    return table


OBS_MODE_INTENT = _obs_mode_table()
PIPELINE_INTENTS = frozenset(OBS_MODE_INTENT.values())
# What hifa_restoredata's applycal calibrates: lines (or parts of lines) with
# other intents are not applied by the pipeline, so they are not applied here.
APPLIED_INTENTS = ("TARGET", "PHASE", "BANDPASS", "AMPLITUDE", "CHECK", "POLARIZATION", "POLANGLE", "POLLEAKAGE")
# hifa_restoredata's applycal selects cross-correlations only.
APPLIED_ANTENNA = "*&*"


# A spw the pipeline calls "science": not a 1- or 4-channel window, observed with one of these intents.
SCIENCE_SPW_INTENTS = frozenset(("TARGET", "PHASE", "BANDPASS", "AMPLITUDE", "POLARIZATION", "POLANGLE",
                                 "POLLEAKAGE", "CHECK", "DIFFGAINREF", "DIFFGAINSRC"))
EXCLUDED_NCHAN = (1, 4)


def science_spws(nchan_by_spw, obs_modes_by_spw) -> list:
    """The spws hifa_restoredata's applycal calibrates (its outer spw selection)."""
    def intents(modes):
        return {i for m, i in OBS_MODE_INTENT.items() if any(m in row for row in modes)}
    return sorted(s for s, n in nchan_by_spw.items()
                  if n not in EXCLUDED_NCHAN and intents(obs_modes_by_spw.get(s, ())) & SCIENCE_SPW_INTENTS)


def pipeline_intents(value, lineno, path) -> list:
    """The pipeline intents of an intent= value; '' means every intent the pipeline applies."""
    if not isinstance(value, str):
        raise CalapplyError(path, lineno, "intent= must be a string")
    names = [v.strip().strip("*") for v in value.split(",") if v.strip()]
    if not names:
        return list(APPLIED_INTENTS)
    for name in names:
        if name in OBS_MODE_INTENT:
            # hifa_restoredata looks intent= up among pipeline intents only: it
            # would drop this one silently and apply nothing for it.
            raise CalapplyError(path, lineno, f"intent {name!r} is an obs_mode, not a pipeline intent "
                                              f"({OBS_MODE_INTENT[name]!r}): the pipeline would not apply this line")
        if name not in PIPELINE_INTENTS:
            raise CalapplyError(path, lineno, f"unknown pipeline intent {name!r} "
                                              f"(known: {', '.join(sorted(PIPELINE_INTENTS))})")
    return names


def casa_intent(value, ms_obs_modes, lineno, path) -> str:
    """The obs_modes of the MS (STATE OBS_MODE rows) that intent= selects, as
    hifa_restoredata hands them to applycal; an error when they select nothing."""
    wanted = [i for i in pipeline_intents(value, lineno, path) if i in APPLIED_INTENTS]
    if not wanted:
        raise CalapplyError(path, lineno, f"intent={value!r}: none of these intents is one the pipeline "
                                          f"applies calibration to ({', '.join(APPLIED_INTENTS)})")
    # The pipeline looks for each obs_mode inside a STATE row's OBS_MODE string.
    modes = sorted(m for m, i in OBS_MODE_INTENT.items() if i in wanted and any(m in row for row in ms_obs_modes))
    if not modes:
        seen = sorted({m.strip() for row in ms_obs_modes for m in row.split(",")})
        raise CalapplyError(path, lineno, f"intent={value!r}: the MS has no scan with these intents "
                                          f"(its obs_modes: {', '.join(seen) or 'none'}): "
                                          "this line would apply nothing")
    return ",".join(modes)


def for_casa(kwargs, ms_obs_modes, lineno, path) -> dict:
    """A parsed line as hifa_restoredata applies it: pipeline intents mapped to the
    MS's obs_modes, cross-correlations only."""
    out = dict(kwargs)
    out["intent"] = casa_intent(kwargs.get("intent", ""), ms_obs_modes, lineno, path)
    out["antenna"] = APPLIED_ANTENNA
    return out


def _short(text, n=80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _plain(value):
    """Lists for tuples, Python scalars for numpy ones, so that repr() is a literal."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def format_applycal(kwargs) -> str:
    """One calapply.txt line in the pipeline's form (no applymode, no flagbackup).

    Every keyword of LINE_KEYWORDS must be present; applymode and flagbackup
    are left out as the pipeline does; any other keyword is refused, since the
    real form has no place for it.
    """
    extra = set(kwargs) - set(LINE_KEYWORDS) - set(PIPELINE_DEFAULTS)
    missing = [k for k in LINE_KEYWORDS if k not in kwargs]
    if extra or missing:
        raise ValueError(f"format_applycal: missing {missing}, not in the pipeline form {sorted(extra)}")
    parts = []
    for key in LINE_KEYWORDS:
        text = repr(_plain(kwargs[key]))
        ast.literal_eval(text)  # what we write must read back as data
        parts.append(f"{key}={text}")
    return f"applycal({', '.join(parts)})"


def format_calapply(eb, calls) -> str:
    """A whole calapply.txt: the header line, then one line per call."""
    return "".join([f"{HEADER}{eb}.ms\n", *(format_applycal(c) + "\n" for c in calls)])
