"""calapply.txt as data: the worker's side of include/casa_scripts/calapply_parse.py.

The parser itself lives in include/casa_scripts/ because the native restore
script needs it inside CASA's Python, where neither airflow nor alma_regen may
be imported. This module loads that one file by path (alma_regen.paths.include_dir)
so the worker and the CASA child parse with the same code, and turns its
CalapplyError into the DeliveryError every step of alma_regen raises.

    calls = parse_calapply(member / "calibration" / f"{eb}.ms.calapply.txt", workdir)
    # -> [{'vis': '<workdir>/<EB>.ms', ..., 'applymode': 'calflagstrict', 'flagbackup': False}, ...]
    line = format_applycal(calls[0])   # one line in the pipeline's form
"""
import importlib.util
import sys
from functools import cache

from .errors import DeliveryError
from .paths import casa_script

_MODULE = "alma_regen_calapply_parse"


@cache
def _parser():
    if _MODULE in sys.modules:
        return sys.modules[_MODULE]
    spec = importlib.util.spec_from_file_location(_MODULE, casa_script("calapply_parse.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE] = module
    spec.loader.exec_module(module)
    return module


def parse_calapply(path, workdir, eb=None, session=None) -> list:
    """The applycal keyword dicts of `<EB>.ms.calapply.txt`, paths rewritten under `workdir`.

    Raises DeliveryError(path, "line N: ...") for anything that is not a plain
    applycal call with literal arguments on the EB's own MS and caltables (and, given
    its `session`, the session's own tables).
    """
    p = _parser()
    try:
        return p.parse_calapply(path, workdir, eb, session)
    except p.CalapplyError as exc:
        where = f"line {exc.lineno}: " if exc.lineno else ""
        raise DeliveryError(exc.path, where + exc.message) from None


def polcal_tables(calls) -> list:
    """The caltables of these calls that hifa_polcal made: hifa_restoredata applies with parang=True
    when there is one."""
    return _parser().polcal_tables(calls)


def format_applycal(kwargs) -> str:
    """One `applycal(vis=..., ..., calwt=[...])` line in the pipeline's keyword order."""
    return _parser().format_applycal(kwargs)


def format_calapply(eb, calls) -> str:
    """A whole calapply.txt: `# Apply file for <EB>.ms`, then one line per call."""
    return _parser().format_calapply(eb, calls)
