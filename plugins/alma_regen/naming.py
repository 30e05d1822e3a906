"""ALMA identifiers and the file names the archive uses for them.

An ALMA UID is written `uid://A001/X1296/X133`; in file names it becomes
`uid___A001_X1296_X133`. Keeping both conversions here means nobody re-derives
them with ad-hoc string replaces.
"""
import re

from .errors import PermanentError

# uid://A001/X1296/X133 : archive id, then two hex-ish parts each starting with X.
# \Z, not $: `$` also matches before a trailing newline, and "uid://A001/X1/X2\n"
# must be refused, not turned into a folder name with a newline in it.
UID_RE = re.compile(r"^uid://(A\d{3})/(X[0-9a-fA-F]+)/(X[0-9a-fA-F]+)\Z")
FILE_UID_RE = re.compile(r"^uid___(A\d{3})_(X[0-9a-fA-F]+)_(X[0-9a-fA-F]+)\Z")
# The pattern of the DAG's mous_uid param (and of bulk worklists). MOUSs live in
# archive A001, the early ones (Cycles 0-2) in A002 (the archive's Cycle 0-2 packages); no
# other archive holds MOUSs, so no other is accepted. It is a JSON-schema pattern,
# checked with re.search, and an ECMA regex for any browser: `\Z` is not ECMA, and
# `$` alone also matches before a trailing newline in Python, so `$(?!\n)` refuses
# a pasted "uid://A001/X1/X2\n" in both.
MOUS_PARAM_PATTERN = r"^uid://A00[12]/X[0-9a-fA-F]+/X[0-9a-fA-F]+$(?!\n)"
PROJECT_RE = re.compile(r"^\d{4}\.\d\.\d{5}\.[A-Z]+\Z")


def uid_to_file(uid: str) -> str:
    """`uid://A001/X1296/X133` -> `uid___A001_X1296_X133` (idempotent)."""
    if not isinstance(uid, str):
        raise PermanentError(f"not an ALMA UID: {uid!r} (expected uid://A001/X.../X...)")
    if FILE_UID_RE.match(uid):
        return uid
    m = UID_RE.match(uid)
    if not m:
        raise PermanentError(f"not an ALMA UID: {_short(uid)} (expected uid://A001/X.../X...)")
    return "uid___{}_{}_{}".format(*m.groups())


def file_to_uid(name: str) -> str:
    """`uid___A001_X1296_X133` -> `uid://A001/X1296/X133` (idempotent)."""
    if not isinstance(name, str):
        raise PermanentError(f"not an ALMA UID in file form: {name!r}")
    if UID_RE.match(name):
        return name
    m = FILE_UID_RE.match(name)
    if not m:
        raise PermanentError(f"not an ALMA UID in file form: {_short(name)}")
    return "uid://{}/{}/{}".format(*m.groups())


def _short(text: str, limit: int = 60) -> str:
    """repr(text), cut so that an error stays one readable line."""
    r = repr(text)
    return r if len(r) <= limit else f"{r[:limit]}... ({len(text)} characters)"


def data_uid_to_file(uid: str) -> str:
    """A Main.xml dataUID as its ASDMBinary file name (':' and '/' -> '_')."""
    return uid.replace(":", "_").replace("/", "_")


def asdm_dir(eb: str) -> str:
    """The folder of an EB's ASDM in raw/."""
    return f"{uid_to_file(eb)}.asdm.sdm"


def asdm_tar(project: str, eb: str) -> str:
    return f"{project}_{uid_to_file(eb)}.asdm.sdm.tar"


def auxiliary_tar(project: str, mous: str) -> str:
    return f"{project}_{uid_to_file(mous)}_auxiliary.tar"


def product_tar(project: str, mous: str, part: int = 1, parts: int = 1) -> str:
    return f"{project}_{uid_to_file(mous)}_{part:03d}_of_{parts:03d}.tar"


def readme_name(mous: str) -> str:
    return f"member.{uid_to_file(mous)}.README.txt"


MEMBER_PREFIX = "member."


def member_dir(mous: str) -> str:
    """`uid://A001/X1296/X133` -> `member.uid___A001_X1296_X133`, the folder a MOUS is staged into."""
    return f"{MEMBER_PREFIX}{uid_to_file(mous)}"


def mous_of_member_dir(name: str) -> str | None:
    """The inverse of `member_dir`: `member.uid___A001_X1296_X133` -> `uid://A001/X1296/X133`; None
    for a name that is not `member.<MOUS>`. The one place a folder name is read back as a MOUS."""
    if not isinstance(name, str) or not name.startswith(MEMBER_PREFIX):
        return None
    m = FILE_UID_RE.match(name[len(MEMBER_PREFIX):])
    return "uid://{}/{}/{}".format(*m.groups()) if m else None


# The id of an alma_regenerate run: the MOUS in file form, then the UTC time it was
# asked for (`uid___A001_X1296_X133__20261124T160901`); runs of the bulk feeder put
# `bulk__` first. Airflow run ids allow only letters, digits and `_.~:+-`, so the uid
# goes in its file form; the MOUS then shows in the runs list and its search.
RUN_ID_RE = re.compile(r"(?:^|__)(uid___A\d{3}_X[0-9a-fA-F]+_X[0-9a-fA-F]+)__\d{8}T\d{6}")


def run_id(mous: str, when, prefix: str = "") -> str:
    """`uid://A001/X1296/X133` at 2026-11-24 16:09:01 UTC -> `uid___A001_X1296_X133__20261124T160901`."""
    return f"{prefix + '__' if prefix else ''}{uid_to_file(mous)}__{when.strftime('%Y%m%dT%H%M%S')}"


def mous_of_run_id(run: str) -> str | None:
    """The MOUS a run id names (see `run_id`), or None for other ids (`manual__...`)."""
    m = RUN_ID_RE.search(run or "")
    return file_to_uid(m.group(1)) if m else None
