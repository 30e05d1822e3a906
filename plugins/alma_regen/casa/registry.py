"""The CASA registry: which CASA versions are installed here, and how to start each.

Sites run several CASA versions side by side. Each installation is a
`CasaLauncher` of one of two kinds:

- ``casa``: a monolithic CASA tarball (``.../bin/casa``), with or without the
  ALMA pipeline. Started as ``casa [--pipeline] --nologger --log2term --nogui --agg -c script args``.
- ``modular``: a Python with casatools/casatasks/casashell from PyPI. Started as
  ``python -m casashell --nologger --log2term --nogui --agg -c script args`` (the delivery's
  scripts expect CASA's shell namespace) or as plain ``python script args``
  (our own scripts of include/casa_scripts/, which import casatasks themselves).

The configuration is a JSON document, read from the file named by
``ALMA_REGEN_CASA_REGISTRY`` (or given inline in that variable, so an Airflow
Variable can carry it later); without that variable, from
``<workdir>/casa-registry.json`` when it exists (``ALMA_REGEN_WORKDIR``, shared
by the workers), the file ``alma-regen casa-versions add-pipeline`` writes::

    {"installs": [
      {"kind": "casa", "executable": "/opt/casa-6.5.4-9-pipeline-2023.1.0.124-py3.8/bin/casa",
       "version": "6.5.4-9", "pipeline": "2023.1.0.124"},
      {"kind": "modular", "executable": "/opt/casa661/bin/python", "version": "6.6.1-17"},
      {"kind": "modular", "executable": "/opt/alma/work/casa-layers/pipeline-2025.1.1.61-<key>/bin/python",
       "version": "6.7.0-31", "pipeline": "2025.1.1.61"}
    ]}

A bare list of entries is accepted too. ``version`` and ``pipeline`` of a
``casa`` entry may be left out when the tarball's folder name carries them.
A ``modular`` entry with ``pipeline`` is a pipeline release layered on a
modular CASA (casa/pipeline_layer.py): started as ``python -m casashell --pipeline``.
The modular CASA of requirements.txt (this Python) is always registered, its
version read from casatools' package metadata, without importing casatools:
importing CASA in the worker process is what the runner exists to avoid.

Resolution, as scriptForPI and the README ask: manually calibrated data need the exact CASA
version recorded in the delivery; pipeline-calibrated data may use that version
or the newest installed pipeline CASA (never an older one); an override wins
over both. When nothing fits, a CasaError lists what is installed.

This module does not import Airflow.
"""
import importlib.metadata
import json
import os
import re
import sys
import tempfile
from dataclasses import asdict, dataclass
from functools import total_ordering
from pathlib import Path

from ..errors import CasaError

REGISTRY_ENV = "ALMA_REGEN_CASA_REGISTRY"
# In the working folder: every worker of a deployment sees the same file.
DEFAULT_REGISTRY_NAME = "casa-registry.json"
KINDS = ("casa", "modular")
# Unattended: no logger window, no GUI, no display for plots; --log2term puts
# the whole CASA log (INFO lines too, not only WARN/SEVERE) on the console, so
# the runner streams it into the task log line by line.
_HEADLESS = ["--nologger", "--log2term", "--nogui", "--agg"]

_MAX_PART_DIGITS = 9


def _short(text, limit: int = 40) -> str:
    """repr(text), cut to a readable length (an error message stays one short line)."""
    r = repr(text)
    return r if len(r) <= limit else f"{r[:limit]}... ({len(str(text))} characters)"


# 6.5.4-9 (CASA's notation), 6.5.4.9 (PyPI's), inside any text ("CASA 6.5.4-9").
_VERSION_RE = re.compile(r"(?<![\d.])(\d+)\.(\d+)\.(\d+)(?:[.-](\d+))?(?!\.?\d)")
# casa-6.5.4-9-pipeline-2023.1.0.124-py3.8.el8: what a monolithic tarball is called.
_TARBALL_RE = re.compile(r"casa-(\d+\.\d+\.\d+-\d+)(?:-pipeline-(\d{4}\.\d+\.\d+\.\d+))?")


@total_ordering
@dataclass(frozen=True)
class CasaVersion:
    """A CASA version, compared numerically. `build` None means "any build"."""

    major: int
    minor: int
    patch: int
    build: int | None = None

    @classmethod
    def parse(cls, text) -> "CasaVersion":
        if isinstance(text, CasaVersion):
            return text
        m = _VERSION_RE.search(str(text or ""))
        if not m:
            raise CasaError(f"not a CASA version: {_short(text)} (expected e.g. 6.5.4-9)")
        major, minor, patch, build = m.groups()
        # No CASA part is longer than a few digits; a huge one would also exceed
        # Python's int() limit (4300 digits) with a ValueError and a traceback.
        if any(g is not None and len(g) > _MAX_PART_DIGITS for g in m.groups()):
            raise CasaError(f"not a CASA version: {_short(text)} (a part longer than {_MAX_PART_DIGITS} digits)")
        return cls(int(major), int(minor), int(patch), int(build) if build is not None else None)

    def key(self):
        return (self.major, self.minor, self.patch, -1 if self.build is None else self.build)

    def __lt__(self, other):
        return self.key() < other.key()

    def matches(self, installed: "CasaVersion") -> bool:
        """True when `installed` is this version (any build if ours has none)."""
        if (self.major, self.minor, self.patch) != (installed.major, installed.minor, installed.patch):
            return False
        return self.build is None or self.build == installed.build

    def __str__(self):
        base = f"{self.major}.{self.minor}.{self.patch}"
        return base if self.build is None else f"{base}-{self.build}"


@dataclass(frozen=True)
class CasaLauncher:
    """One installed CASA and how to start it."""

    version: CasaVersion
    kind: str                    # "casa" (monolithic) or "modular"
    executable: str              # .../bin/casa, or the Python of a modular CASA
    pipeline: str | None = None  # ALMA pipeline version (of a monolithic CASA, or layered on a modular one)
    source: str = "config"       # where the entry came from (config file, "default")

    @property
    def has_pipeline(self) -> bool:
        return bool(self.pipeline)

    def describe(self) -> str:
        if self.has_pipeline:
            what = f"pipeline {self.pipeline}" + (", modular" if self.kind == "modular" else "")
        else:
            what = "monolithic, no pipeline" if self.kind == "casa" else "modular"
        return f"{self.version} ({what}: {self.executable})"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["version"] = str(self.version)
        return d

    def command(self, script, args=(), *, pipeline: bool = False, shell: bool = True) -> list:
        """The command line that runs `script` with `args` in this CASA.

        pipeline: start CASA with ``--pipeline`` (the hifa_/hif_ tasks); only a
          CASA with the pipeline can (monolithic, or modular with a pipeline layer).
        shell: run inside CASA's shell namespace (``casa -c`` / ``python -m
          casashell -c``), as the delivery's scripts expect. With shell=False a
          modular CASA runs the script with its plain Python; a monolithic CASA
          has no such mode worth supporting, so it always uses ``casa -c``.
        """
        args = [str(a) for a in args]
        if pipeline and not self.has_pipeline:
            raise CasaError(f"CASA {self.describe()} has no ALMA pipeline; --pipeline needs a pipeline CASA")
        if self.kind == "casa":
            return [self.executable, *(["--pipeline"] if pipeline else []), *_HEADLESS, "-c", str(script), *args]
        if shell:
            return [self.executable, "-m", "casashell", *(["--pipeline"] if pipeline else []), *_HEADLESS,
                    "-c", str(script), *args]
        return [self.executable, str(script), *args]


@dataclass(frozen=True)
class Resolution:
    """The CASA chosen for a step, and why (recorded in calibration.json)."""

    launcher: CasaLauncher
    requested: str | None
    reason: str

    def as_dict(self) -> dict:
        return {"casa": self.launcher.as_dict(), "requested": self.requested, "reason": self.reason}


class CasaRegistry:
    def __init__(self, launchers):
        # Newest first, pipeline CASAs before others of the same version:
        # the order `resolve` prefers and `casa-versions` prints.
        self.launchers = sorted(launchers, key=lambda c: (c.version.key(), c.has_pipeline, c.kind == "casa"),
                                reverse=True)

    def describe_installed(self) -> str:
        if not self.launchers:
            return f"none (configure {REGISTRY_ENV})"
        return "; ".join(c.describe() for c in self.launchers)

    def find(self, version, *, needs_pipeline: bool = False) -> CasaLauncher | None:
        """The preferred installed launcher of exactly `version`, or None."""
        wanted = CasaVersion.parse(version)
        for c in self.launchers:
            if wanted.matches(c.version) and (c.has_pipeline or not needs_pipeline):
                return c
        return None

    def modular(self) -> CasaLauncher:
        """The newest modular CASA (our own scripts run there)."""
        for c in self.launchers:
            if c.kind == "modular":
                return c
        raise CasaError(f"no modular CASA installed; installed: {self.describe_installed()}")

    def resolve(self, recorded=None, *, manual: bool = False, needs_pipeline: bool = False,
                override=None) -> Resolution:
        """Pick the CASA for a delivery whose reduction used CASA `recorded`.

        manual: the data were calibrated by hand: only that exact version will do.
        needs_pipeline: the step runs hifa_/hif_ tasks (scriptForPI, casa_pipescript).
        override: an operator's choice (the DAG's casa_version param): must be installed.
        """
        need = " with the ALMA pipeline" if needs_pipeline else ""
        if override:
            c = self.find(override, needs_pipeline=needs_pipeline)
            if c is None:
                raise CasaError(f"CASA {CasaVersion.parse(override)}{need} (override) is not installed; "
                                f"installed: {self.describe_installed()}")
            return Resolution(c, str(override), f"operator override {CasaVersion.parse(override)}")
        if manual:
            if not recorded:
                raise CasaError("manually calibrated data need the exact CASA version of the reduction, "
                                "and the delivery does not record one; set the casa_version override")
            c = self.find(recorded, needs_pipeline=needs_pipeline)
            if c is None:
                raise CasaError(f"CASA {CasaVersion.parse(recorded)}{need} is not installed and manually "
                                f"calibrated data need that exact version; installed: {self.describe_installed()}")
            return Resolution(c, str(recorded), f"manual calibration: the exact version {c.version} of the reduction")
        return self._resolve_pipeline_data(recorded, needs_pipeline)

    def _resolve_pipeline_data(self, recorded, needs_pipeline) -> Resolution:
        need = " with the ALMA pipeline" if needs_pipeline else ""
        if recorded:
            c = self.find(recorded, needs_pipeline=needs_pipeline)
            if c is not None:
                return Resolution(c, str(recorded), f"the version {c.version} recorded in the delivery")
        wanted = CasaVersion.parse(recorded) if recorded else None
        newest = next((c for c in self.launchers if c.has_pipeline), None)
        # A newer pipeline reads older deliveries; an older one may not know
        # the newer manifest or tasks, so it is never picked silently.
        if newest is not None and (wanted is None or not newest.version < wanted):
            why = (f"CASA {wanted} is not installed; pipeline-calibrated data may use the newest pipeline CASA"
                   if wanted else "the delivery records no CASA version; the newest pipeline CASA")
            return Resolution(newest, str(recorded) if recorded else None, f"{why} ({newest.version})")
        if wanted is None and not needs_pipeline and self.launchers:
            return Resolution(self.launchers[0], None, "the delivery records no CASA version; the newest CASA")
        what = f"CASA {wanted}{need}" if wanted else f"a CASA{need}"
        raise CasaError(f"{what} is not installed, nor a newer pipeline CASA; "
                        f"installed: {self.describe_installed()}")


def default_modular() -> CasaLauncher | None:
    """The modular CASA of requirements.txt: this Python, if casatools is installed.

    The version comes from the package metadata (6.7.0.31 -> CASA's 6.7.0-31):
    importing casatools here would load CASA into the Airflow worker.
    """
    try:
        version = importlib.metadata.version("casatools")
        importlib.metadata.version("casatasks")
    except importlib.metadata.PackageNotFoundError:
        return None
    # normpath, not resolve(): a venv's python is a symlink that must stay one.
    return CasaLauncher(CasaVersion.parse(version), "modular", os.path.normpath(sys.executable), None, "default")


def _launcher_from_entry(entry, where) -> CasaLauncher:
    if not isinstance(entry, dict):
        raise CasaError(f"{where}: each CASA entry must be an object, not {entry!r}")
    unknown = set(entry) - {"kind", "executable", "version", "pipeline"}
    if unknown:
        raise CasaError(f"{where}: unknown key(s) {sorted(unknown)} (known: kind, executable, version, pipeline)")
    kind, exe = entry.get("kind"), entry.get("executable")
    if kind not in KINDS:
        raise CasaError(f"{where}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not exe or not os.path.isfile(exe) or not os.access(exe, os.X_OK):
        raise CasaError(f"{where}: executable {exe!r} does not exist or is not executable")
    version, pipeline = entry.get("version"), entry.get("pipeline")
    # A monolithic tarball's folder name carries both versions: use it when the entry does not.
    m = _TARBALL_RE.search(str(exe))
    if m and kind == "casa":
        version = version or m.group(1)
        pipeline = pipeline or m.group(2)
    if not version:
        raise CasaError(f"{where}: no version given and none in the path {exe}")
    return CasaLauncher(CasaVersion.parse(version), kind, str(exe), pipeline or None, where)


def parse_config(text: str, where: str = "registry") -> list:
    """The launchers of a JSON registry document."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CasaError(f"{where}: not valid JSON ({exc})") from None
    entries = doc.get("installs") if isinstance(doc, dict) else doc
    if not isinstance(entries, list):
        raise CasaError(f'{where}: expected {{"installs": [...]}} or a list of CASA entries')
    return [_launcher_from_entry(e, f"{where} entry {i + 1}") for i, e in enumerate(entries)]


def registry_file() -> Path:
    """The registry file `casa-versions add-pipeline` writes and `load_registry` reads:
    $ALMA_REGEN_CASA_REGISTRY when it names a file, else <workdir>/casa-registry.json."""
    from ..config import settings
    s = settings()
    text = s.casa_registry.strip()  # $ALMA_REGEN_CASA_REGISTRY
    if text.startswith(("{", "[")):
        raise CasaError(f"${REGISTRY_ENV} holds the registry inline, not a file to add to; "
                        "give the file with --registry, or move the JSON into a file")
    if text:
        return Path(text)
    return Path(s.workdir) / DEFAULT_REGISTRY_NAME


def save_entry(path, entry: dict, replaces) -> list:
    """Add `entry` to the registry file at `path` (made if missing), dropping the
    entries for which `replaces(entry_dict)` is true. The file is replaced
    atomically: a reader sees the old registry or the new one, never half of one.
    Returns the entries written."""
    path = Path(path)
    entries = []
    if path.exists():
        text = path.read_text()
        parse_config(text, str(path))  # never rewrite a registry that is already broken
        doc = json.loads(text)
        entries = doc.get("installs") if isinstance(doc, dict) else doc
    _launcher_from_entry(entry, "the new entry")
    entries = [e for e in entries if not replaces(e)] + [entry]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise CasaError(f"cannot write the CASA registry {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"installs": entries}, f, indent=1)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return entries


def load_registry(config=None, *, include_default: bool = True) -> CasaRegistry:
    """The registry from `config` (a path or inline JSON), else from $ALMA_REGEN_CASA_REGISTRY,
    else from <workdir>/casa-registry.json if it exists. config="" means none of them.

    The default modular CASA is added unless the configuration already lists
    a modular CASA of the same version with the same Python.
    """
    if config is None:
        from ..config import settings
        config = settings().casa_registry  # $ALMA_REGEN_CASA_REGISTRY
        if not config.strip():
            default_file = registry_file()
            config = str(default_file) if default_file.is_file() else ""
    launchers = []
    text = str(config).strip()
    if text.startswith(("{", "[")):
        launchers = parse_config(text, f"${REGISTRY_ENV}")
    elif text:
        path = Path(text)
        try:
            launchers = parse_config(path.read_text(), str(path))
        except OSError as exc:
            raise CasaError(f"cannot read the CASA registry {path}: {exc.strerror}") from None
    default = default_modular() if include_default else None
    if default and not any(c.kind == "modular" and c.version == default.version
                           and c.executable == default.executable for c in launchers):
        launchers.append(default)
    return CasaRegistry(launchers)
