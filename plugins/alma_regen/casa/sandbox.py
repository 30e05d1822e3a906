"""The sandbox every CASA child runs in: Debian's bubblewrap (`bwrap`).

Delivery code (scriptForPI, restore and pipeline scripts, ImagingPrep,
scriptForImaging, manual calibration scripts) comes from the archive and runs
in CASA's Python; our own CASA scripts run the same way. Inside the sandbox:

- no network: an empty network namespace (loopback only, which reaches
  nothing of the host); new pid, ipc, uts (and, where possible, cgroup)
  namespaces, so no other process of the host is visible, /proc/<pid>/environ
  of the worker included;
- a user namespace with every capability dropped, so nothing can remount the
  read-only view; `bwrap-strict` also forbids user namespaces inside
  (`--disable-userns`), which a nested `unshare` would otherwise create;
- write access only to the member folder holding the step's working folder
  (or the working folder itself when it is in no member folder) and a private
  tmpfs on /tmp (HOME and TMPDIR point there);
- read-only: /usr (and the /bin, /lib... links into it), the few files of /etc
  that programs need to start (loader cache, alternatives, time zone, users,
  fonts), the Python installations (the virtualenv and its base), include/,
  the CASA started (a pipeline layer, a CASA tarball) and the site's extra
  paths (`sandbox_ro_paths`). The rest of the host (home folders, /root,
  /var, /run, /opt, other members, Airflow's configuration) is not there;
- `--die-with-parent`: the sandbox dies with the runner.

The environment comes from an allow-list (`casa.env.child_env`). Not
used: `unshare(1)`, which would need a hand-made view of the file system.

Settings (the worker's environment only, never the `alma_regen` Variable, so
that an Airflow user cannot switch the sandbox off from the UI):
ALMA_REGEN_SANDBOX = bwrap (default) | bwrap-strict | none (explicitly no
sandbox: delivery code sees the host as the worker does); ALMA_REGEN_SANDBOX_RO_PATHS
= extra read-only paths, separated by ':'. A missing bwrap, or a kernel that does
not allow its namespaces, is a one-line error, never a silent run without it.
"""
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Settings
from ..errors import CasaError
from ..naming import mous_of_member_dir
from ..paths import include_dir

MODES = ("bwrap", "bwrap-strict", "none")
BWRAP = "/usr/bin/bwrap"
# Inside the sandbox: HOME and TMPDIR on its private tmpfs.
INSIDE_TMP = "/tmp"
_SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What programs need of /etc to start; the rest of /etc (Airflow's and other
# services' configuration, keys) stays out.
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "timezone", "passwd",
        "group", "nsswitch.conf", "hosts", "fonts", "X11", "mime.types", "os-release", "debian_version")
# Folders the writable root must never be (nor contain): the sandbox would give them away.
_NEVER_WRITABLE = ("/", "/tmp", "/usr", "/etc", "/home", "/root", "/var", "/opt", "/proc", "/dev", "/sys")
_probed: dict = {}


class SandboxUnavailable(CasaError):
    """The configured sandbox cannot run here: a one-line, permanent error."""


# Symptoms of what the sandbox refused, as they appear in a child's output,
# reported once per kind as the run's warnings (the refusal itself is the kernel's).
DENIALS = (
    (re.compile(r"Read-only file system"), "wrote outside its member folder (refused: read-only)"),
    (re.compile(r"Network is unreachable|Connection refused|Couldn't connect to server|Could not resolve host|"
                r"Temporary failure in name resolution|Name or service not known|NetworkRefused"),
     "tried the network (refused: no network in the sandbox)"),
)


@dataclass
class Sandbox:
    """How one CASA step is started: `wrap` the command; `home` for its HOME."""

    mode: str
    writable: list = field(default_factory=list)
    readonly: list = field(default_factory=list)
    bwrap: str = BWRAP

    @property
    def on(self) -> bool:
        return self.mode != "none"

    @property
    def home(self) -> str | None:
        return INSIDE_TMP if self.on else None

    def describe(self) -> str:
        if not self.on:
            return "no sandbox (ALMA_REGEN_SANDBOX=none): the step sees the host as the worker does"
        return f"sandbox {self.mode}: no network, writable {', '.join(map(str, self.writable))} and a private /tmp"

    def wrap(self, command: list) -> list:
        if not self.on:
            return list(command)
        if not command or not shutil.which(command[0]):
            # What Popen would say without the sandbox (bwrap would only fail later, less clearly).
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), command[0] if command else "")
        # A shell as the sandbox's pid 1 waits for the command: the runner then gets the command's
        # resource usage (peak memory) through bwrap, which its own init process loses, and the
        # command is no pid 1, so SIGTERM reaches it as it would outside.
        return [self.bwrap, *self.arguments(), "--", "/bin/sh", "-c", '"$@"; exit $?', "sandbox", *command]

    def arguments(self) -> list:
        a = ["--unshare-all", "--unshare-user", "--die-with-parent", "--as-pid-1", "--cap-drop", "ALL",
             "--hostname", "alma-regen-sandbox"]
        if os.getuid() == 0:
            # A worker running as root is nobody inside (still the owner of its files, which
            # the user namespace maps back to root); without CAP_SETFCAP, root inside could not
            # even map itself into a nested namespace (`unshare -r`), which nobody can.
            a += ["--uid", "65534", "--gid", "65534"]
        if self.mode == "bwrap-strict":
            a.append("--disable-userns")
        a += ["--ro-bind", "/usr", "/usr"]
        for p in _SYSTEM_LINKS:
            if os.path.islink(p):
                a += ["--symlink", os.readlink(p), p]
            elif os.path.isdir(p):
                a += ["--ro-bind", p, p]
        for name in _ETC:
            a += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        # numpy/OpenBLAS and OpenMP count CPUs here; the pipeline reads its cgroup limits (and fails
        # without a cgroup file system).
        a += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu",
              "--ro-bind-try", "/sys/fs/cgroup", "/sys/fs/cgroup"]
        a += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", INSIDE_TMP, "--tmpfs", "/var/tmp"]
        binds = [(p, "--ro-bind") for p in self.readonly] + [(p, "--bind") for p in self.writable]
        # A folder bound under the private /tmp (tests, a workdir in /tmp) has its parents made
        # there: they go on a tmpfs of their own made read-only after, so that a write beside
        # the member folder fails loudly instead of vanishing with the sandbox's /tmp.
        tops = sorted({str(Path(*Path(p).parts[:3])) for p, _ in binds
                       if Path(p).is_relative_to(INSIDE_TMP) and len(Path(p).parts) > 3})
        for top in tops:
            a += ["--tmpfs", top]
        # Parents before children: a writable member under a read-only tree stays writable.
        for path, how in sorted(binds, key=lambda b: (len(Path(b[0]).parts), b[1] == "--bind")):
            a += [how, str(path), str(path)]
        for top in tops:
            a += ["--remount-ro", top]
        a += ["--remount-ro", "/"]
        return a

    def denials(self, lines) -> list:
        """What the child tried that the sandbox refused, one warning per kind, quoting the first line seen."""
        return denials(lines) if self.on else []

    def exit_code(self, code: int) -> int:
        """bwrap reports a child killed by signal N as 128+N: give it back as -N (what Popen says)."""
        if self.on and 128 < code <= 128 + 64:
            try:
                return -signal.Signals(code - 128)
            except ValueError:
                return code
        return code


def sandbox_for(cwd, command, settings: Settings | None = None) -> Sandbox:
    """The sandbox of a step run in `cwd`; raises SandboxUnavailable (one line) when it cannot run."""
    s = settings or Settings.from_env()
    mode = (s.sandbox or "bwrap").strip()
    if mode not in MODES:
        raise SandboxUnavailable(f"ALMA_REGEN_SANDBOX={mode!r} is not one of {', '.join(MODES)}")
    if mode == "none":
        return Sandbox(mode)
    bwrap = BWRAP if os.path.exists(BWRAP) else shutil.which("bwrap")
    if not bwrap:
        raise SandboxUnavailable("the CASA sandbox needs bubblewrap (apt-get install bubblewrap), not found; "
                                 "ALMA_REGEN_SANDBOX=none runs delivery code unsandboxed (not recommended)")
    writable = _writable_roots(cwd)
    box = Sandbox(mode, writable, _readonly(command, writable, s), bwrap)
    _probe(box)
    return box


def _writable_roots(cwd) -> list:
    """The member folder holding `cwd` (member.<MOUS>/): every delivery script and every CASA step of
    a MOUS runs in one. A step outside any member folder (our dev tools: synth writes its delivery
    beside its scratch folder; benchmarks; tests) gets the folder holding its working folder.
    As named and at its real path when a link leads there: both are mount points of the same folder."""
    roots = []
    for where in (Path(os.path.abspath(cwd)), Path(cwd).resolve()):
        root = next((p for p in (where, *where.parents) if _is_member(p)), where.parent)
        real = root.resolve()
        for never in _NEVER_WRITABLE:
            if real == Path(never) or Path(never).is_relative_to(real) or real == Path.home().resolve():
                raise SandboxUnavailable(f"{cwd}: a CASA step cannot run with {real} writable; "
                                         "give it a folder of its own")
        if root not in roots:
            roots.append(root)
    return roots


def _is_member(folder: Path) -> bool:
    """A member folder, member.<MOUS> (read by the one parser of that name, alma_regen.naming)."""
    return mous_of_member_dir(folder.name) is not None


def _prefix(executable: Path) -> Path:
    """The installation an executable belongs to: <prefix>/bin/x -> <prefix>."""
    return executable.parent.parent if executable.parent.name == "bin" else executable.parent


def _readonly(command, writable, s: Settings) -> list:
    want = [Path(sys.prefix), Path(sys.base_prefix), _prefix(Path(sys.executable).resolve()),
            include_dir().resolve()]
    exe = shutil.which(command[0]) if command else None
    if exe:
        # The CASA started: a virtualenv, a pipeline layer (bin/python), a CASA tarball (bin/casa).
        want += [_prefix(Path(os.path.abspath(exe))), _prefix(Path(exe).resolve())]
    want += [Path(p) for p in (s.sandbox_ro_paths or "").split(os.pathsep) if p.strip()]
    # Absolute paths in the command (a script, a job's inputs): our code builds every command,
    # a delivery's script cannot choose them. A system folder as an argument opens nothing more.
    want += [Path(c) for c in command[1:] if c.startswith("/") and Path(c).exists()]
    want += _linked_members(writable)
    out = []
    for p in want:
        p = Path(os.path.abspath(p))
        if not p.exists() or str(p) in _NEVER_WRITABLE or p.is_relative_to("/usr") or p.parent == Path("/"):
            continue
        if any(p.is_relative_to(w) for w in writable) or p in out:
            continue
        out.append(p)
    # A folder inside another already bound read-only adds nothing.
    return [p for p in out if not any(p != q and p.is_relative_to(q) for q in out)]


def _linked_members(writable, depth: int = 3) -> list:
    """Targets of links near the top of the member folder that lead into another member folder
    (a shared raw cache, a calibrated member reused read-only): visible read-only. A link leading
    anywhere else (a hostile delivery's link to a home folder) opens nothing."""
    found = []
    for root in writable:
        stack = [(Path(root), 0)]
        while stack:
            d, level = stack.pop()
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                if e.is_symlink():
                    target = Path(e.path).resolve()
                    if (target.exists() and not any(target.is_relative_to(w) for w in writable)
                            and any(_is_member(p) for p in (target, *target.parents))):
                        found.append(target)
                elif level + 1 < depth and e.is_dir(follow_symlinks=False) and not e.name.endswith(".ms"):
                    stack.append((Path(e.path), level + 1))
    return found


def _probe(box: Sandbox):
    """Start the sandbox once per process with `true`: a kernel without user namespaces fails here, clearly."""
    key = (box.bwrap, box.mode)
    if key not in _probed:
        cmd = [box.bwrap, *Sandbox(box.mode, bwrap=box.bwrap).arguments(), "--", "/usr/bin/true"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
            _probed[key] = "" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["exit %d"
                                                                                                  % done.returncode])[0]
        except (OSError, subprocess.TimeoutExpired) as exc:
            _probed[key] = str(exc)
    if _probed[key]:
        raise SandboxUnavailable(f"the CASA sandbox ({box.mode}) cannot start here: {_probed[key]}; allow "
                                 "unprivileged user namespaces, or set ALMA_REGEN_SANDBOX=none to run delivery "
                                 "code unsandboxed (not recommended)")


def denials(lines) -> list:
    """What the child tried that the sandbox refused, one warning per kind, quoting the first line seen."""
    found = {}
    for line in lines:
        for pattern, what in DENIALS:
            if what not in found and pattern.search(line):
                found[what] = line.strip()[:200]
    return [f"sandbox: the step {what}: {quote}" for what, quote in found.items()]
