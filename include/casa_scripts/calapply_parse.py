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
  path such as `/etc/passwd` or `..` out;
- the pipeline's applycal defaults are added (applymode='calflagstrict',
  flagbackup=False) unless the line sets them.

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


def parse_calapply(path, workdir, eb=None) -> list:
    """The applycal keyword dicts of the file at `path`, paths under `workdir`."""
    eb = eb or eb_of(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CalapplyError(path, 0, f"cannot read: {exc}") from None
    return parse_calapply_text(text, workdir, eb, path)


def parse_calapply_text(text, workdir, eb, path="<calapply>") -> list:
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
        calls.append(_parse_line(line, lineno, workdir, eb, path))
    if not calls:
        raise CalapplyError(path, 0, "no applycal call: nothing would be calibrated")
    return calls


def _check_header(line, lineno, eb, path):
    if line.startswith(HEADER):
        named = line[len(HEADER):].strip()
        if named != f"{eb}.ms":
            raise CalapplyError(path, lineno, f"header names {named!r}, but this is the file of {eb}.ms")


def _parse_line(line, lineno, workdir, eb, path) -> dict:
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
    _rewrite_paths(kwargs, lineno, workdir, eb, path)
    for key, value in PIPELINE_DEFAULTS.items():
        kwargs.setdefault(key, value)
    return kwargs


def _rewrite_paths(kwargs, lineno, workdir, eb, path):
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
        # Caltables come from the session's tgz, whose members all start with <EB>.ms.
        if not name.startswith(f"{eb}.ms.") or name == f"{eb}.ms.":
            raise CalapplyError(path, lineno, f"caltable {table!r} is not a caltable of {eb}.ms (outside the delivery)")
        rewritten.append(os.path.join(str(workdir), name))
    if "gaintable" in kwargs:
        kwargs["gaintable"] = rewritten


def _basename(p, lineno, path) -> str:
    # The last "/" component must be a plain file name: not empty, ".", ".." or a Windows path.
    name = p.rsplit("/", 1)[-1]
    if name in ("", ".", "..") or "\\" in name or "\0" in name:
        raise CalapplyError(path, lineno, f"unusable path {p!r}")
    return name


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
