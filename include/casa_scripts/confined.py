"""What the native restore reads and unpacks from a delivery, kept inside its folders.

The delivery's `<EB>.ms.flagversions.tgz` and its session's `*.caltables.tgz`
come from outside. hifa_restoredata untars them into the working directory;
here each member must belong to the EB being restored, by its first path
component, and stay there:
- flag versions: every member is `<EB>.ms.flagversions` or inside it;
- caltables: members of this EB are those whose first component starts with
  `<EB>.`; each must be a caltable `<EB>.ms.<name>` (as the pipeline names
  them) and not one of the names the restore itself writes (`<EB>.ms`,
  `<EB>.ms.flagversions`, `<EB>.ms.split.cal`, `<EB>.ms.split`,
  `<EB>.ms.session_caltables`); members of the session's other EBs are left in
  the tarball. Given the EB's `session`, the session's own tables
  (`<session>_<name>.ms.<table>`, hifa_polcal's, which hifa_restoredata applies
  to every EB of the session) are members too: they go to this EB's own
  `<EB>.ms.session_caltables/` (calapply_parse.SESSION_TABLES), so that two EBs
  of one session restored side by side never replace each other's copy;
- no `..`, no absolute name, no NUL, no member that is not a plain file or
  folder (links, devices, FIFOs), no member twice or a file and a folder of one
  name, no name longer than the file system takes.
An earlier attempt's copies of the same top-level entries are removed first
(they are ours, from the working directory), so the result is exactly the
tarball's. Then tarfile's 'data' filter extracts, as a second opinion.

`inside(path, root)` is the check made again right before CASA reads a file
the delivery named (a caltable of calapply.txt): its real path, links
followed, is under `root`.

Standard library and calapply_parse.py beside it (whose rule names a session's
own tables, so that what is unpacked and what calapply.txt may name are one
rule): it runs in CASA's Python (restore_eb.py imports it by path) and is
tested directly.
"""
import os
import shutil
import sys
import tarfile

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # loaded by path (the tests): calapply_parse sits beside this file
    sys.path.append(_HERE)
from calapply_parse import SESSION_TABLES, is_session_table  # noqa: E402

RESERVED_SUFFIXES = (".ms", ".ms.flagversions", ".ms.split.cal", ".ms.split", ".ms." + SESSION_TABLES)


class ConfinementError(ValueError):
    """A delivery file that would read or write outside its place."""


def _short(name, n=160):
    return name if len(name) <= n else "%s...(%d characters)...%s" % (name[:n // 2], len(name), name[-n // 4:])


def inside(path, root):
    """The real path of `path` (links followed), which must be `root` or under it."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    if real != top and not real.startswith(top + os.sep):
        raise ConfinementError("%s resolves to %s, outside %s" % (_short(str(path)), _short(real), top))
    return real


def _parts(tgz, name):
    if "\0" in name:
        raise ConfinementError("%s: member %r has a NUL in its name" % (tgz, _short(name)))
    if name.startswith("/"):
        raise ConfinementError("%s: member %r is an absolute path" % (tgz, _short(name)))
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ConfinementError("%s: member %r has '..' in its path" % (tgz, _short(name)))
    return parts


def _owned(tgz, parts, eb, kind, shown, session=None):
    """Where a member goes: its parts for a member of this EB, its parts under
    <EB>.ms.session_caltables/ for a table of the EB's session, None for another
    EB's (caltables only); refuses the rest."""
    top = parts[0] if parts else ""
    if kind == "flagversions":
        if top != eb + ".ms.flagversions":
            raise ConfinementError("%s: member %r is outside %s.ms.flagversions/" % (tgz, _short(shown), eb))
        return parts
    if is_session_table(top, session):
        return [eb + ".ms." + SESSION_TABLES] + parts
    if not top.startswith(eb + "."):
        return None  # another EB of the session: not unpacked
    if not top.startswith(eb + ".ms.") or top == eb + ".ms." or any(top == eb + s for s in RESERVED_SUFFIXES):
        raise ConfinementError("%s: member %r is not a caltable of %s.ms (caltables are %s.ms.<name>, and the "
                               "restore writes %s itself)" % (tgz, _short(shown), eb, eb,
                                                              ", ".join(eb + s for s in RESERVED_SUFFIXES)))
    return parts


def _check_length(tgz, dest, parts, shown):
    raw = os.fsencode(os.path.join(dest, *parts))
    try:
        name_max, path_max = os.pathconf(dest, "PC_NAME_MAX"), os.pathconf(dest, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    if max(len(os.fsencode(p)) for p in parts) > name_max or len(raw) >= path_max:
        raise ConfinementError("%s: member %r: name too long for the file system" % (tgz, _short(shown)))


def safe_extract(tgz, dest, eb, kind, session=None):
    """Unpack the members of EB `eb` (file form) from a restore tarball of `kind`
    ("flagversions" or "caltables") into `dest`, with the tables of its `session`
    (caltables only); returns how many. ConfinementError for anything that does not
    belong there (see the module docstring)."""
    if kind not in ("flagversions", "caltables"):
        raise ValueError("kind must be flagversions or caltables, not %r" % (kind,))
    try:
        with tarfile.open(tgz) as tf:
            members, kinds, tops = [], {}, set()
            for m in tf:
                parts = _parts(tgz, m.name)
                if not parts:
                    continue  # the archive's own "./" entry
                parts = _owned(tgz, parts, eb, kind, m.name, session)
                if parts is None:
                    continue
                if not (m.isfile() or m.isdir()):
                    raise ConfinementError("%s: member %r is not a plain file or folder (links, devices and "
                                           "FIFOs are refused)" % (tgz, _short(m.name)))
                _check_length(tgz, dest, parts, m.name)
                rel = "/".join(parts)
                for i in range(1, len(parts)):  # a folder on the way must not be a file of the archive
                    if kinds.get("/".join(parts[:i])) == "file":
                        raise ConfinementError("%s: member %r collides with the file %r of the same archive"
                                               % (tgz, _short(m.name), _short("/".join(parts[:i]))))
                kind_of = "dir" if m.isdir() else "file"
                if rel in kinds and (kind_of == "file" or kinds[rel] == "file"):
                    raise ConfinementError("%s: member %r appears twice, or as a file and a folder"
                                           % (tgz, _short(m.name)))
                kinds[rel] = kind_of
                m.name = rel
                members.append(m)
                tops.add(parts[0])
            if not members:
                raise ConfinementError("%s holds nothing for %s" % (tgz, eb))
            for top in sorted(tops):  # an earlier attempt's copies: ours, replaced whole
                path = os.path.join(dest, top)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                elif os.path.lexists(path):
                    os.unlink(path)
            tf.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError) as exc:
        # One line: tarfile's ReadError lists each compression it tried on a line of its own.
        raise ConfinementError("%s: cannot be unpacked: %s" % (tgz, " ".join(str(exc).split()))) from None
    for top in tops:
        inside(os.path.join(dest, top), dest)
    return len(members)
