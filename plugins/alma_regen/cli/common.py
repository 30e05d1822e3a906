"""What the step commands share (`alma-regen ...`; each command module only parses and calls):
JSON on stdout, the member folder checked and its MOUS locked as a DAG run locks it,
the CASA time limit, the --casa-version check."""
import json
import sys
from contextlib import contextmanager


def print_json(obj):
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def usable_folder(path, what: str = "folder", *, writable: bool = True):
    """A clear error (PermanentError) unless `path` is an existing folder we may write in."""
    import os
    from pathlib import Path

    from ..errors import PermanentError
    p = Path(path)
    if not p.exists():
        raise PermanentError(f"{p}: no such {what}")
    if not p.is_dir():
        raise PermanentError(f"{p} is a file, not a {what}")
    if writable and not os.access(p, os.W_OK | os.X_OK):
        raise PermanentError(f"{p} is read-only: the {what} must be writable")
    return p


@contextmanager
def member_step(member_dir, command: str):
    """Run one step on a member folder: the folder checked, the MOUS's lock held (the DAG's)."""
    from ..member import Member
    from ..mous_lock import held
    member = usable_folder(member_dir, "member folder")
    usable_folder(member.resolve().parent, "working folder")  # the lock lives in <workdir>/.locks
    mous = Member.coerce(member).mous
    if not mous:  # not a member.<MOUS> folder: no DAG run can be working in it under a MOUS name
        yield None
        return
    with held(member.resolve().parent, mous, command) as run_id:
        yield run_id


def casa_timeout(member_dir, given):
    """--timeout, else the limit the settings give for this member's raw data (alma_regen.timeouts)."""
    if given:
        return given
    from ..config import Settings
    from ..timeouts import casa_timeout as from_size
    return from_size(member_dir, Settings.from_env())


def casa_version_arg(text):
    """--casa-version: empty, or a version CASA could have (a CasaError, one line, before any work)."""
    if not text:
        return None
    from ..casa.registry import CasaVersion
    CasaVersion.parse(text)
    return text
