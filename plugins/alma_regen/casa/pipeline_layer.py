"""A pipeline CASA built from an ALMA pipeline release, on the modular CASA of requirements.txt.

`python -m casashell --pipeline` imports `pipeline` and runs `pipeline.initcli()`
(casashell's __main__), so the pipeline source on the path of our modular CASA, plus the
PyPI dependencies of its requirements.txt, is a working pipeline CASA. Those
dependencies contradict the Airflow environment's pins (numpy 2.3.5 against
2.4.6), so they go into a layer of their own, never into the venv:

    <layers>/pipeline-<release>-<key>/
        src/pipeline/        the release's `pipeline` package (+ requirements.txt, LICENSE.md)
        deps/                `pip install --target` of its requirements (OVERRIDES applied),
                             casaplotms and casarecipes, and a `recipes` alias package
        bin/python           the launcher: PYTHONPATH=deps:src, then the modular CASA's python
        layer.json           what was built from what, the build time and size

CASA itself (casatools, casatasks, casaconfig and the data, ~1 GB) is the
venv's and is not copied: the layer holds only what the pipeline adds
(`build` checks it). The launcher stands where a registry entry's executable
goes, so every `launcher.command(...)` call works unchanged; casa/env.py drops
PYTHONPATH from a CASA child's environment, and the launcher sets it after.

Weblog plots: casaplotms needs an X display. The launcher starts a private
Xvfb (Debian's `xvfb`) for each `--pipeline` run when it is installed, and
stops it after; without one (or when it does not start) the run goes on
without a display and the weblog lacks its plotms plots (the pipeline logs
those errors; the tasks' results are unaffected). Xvfb never fails a run.

The build is cached by content: the key hashes the release, the overrides and
the Python the layer is for, so the same release is built once and a changed
release or override gives a new layer. A layer is built in a temporary folder
and renamed into place when complete: a half-built layer is never used.

This module does not import Airflow.
"""
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from ..errors import CasaError

log = logging.getLogger(__name__)

# Bump when the layout or the launcher changes: older layers are then rebuilt.
LAYER_FORMAT = 3
# The versions that work on this platform where the release's requirements.txt
# pins others (checked with 2025.1.1.61 on Python 3.11 / CASA 6.7.0):
# - astropy 7.1.0 (its pin) fails on numpy 2.x here (`np.in1d`); 7.2.x works;
# - the imaging heuristics fail on numpy 2.4 ("only 0-dimensional arrays can be
#   converted to Python scalars") and run on numpy 2.3.5.
OVERRIDES = {"astropy": "astropy==7.2.3", "numpy": "numpy==2.3.5"}
# bdsf is for the VLASS pipeline only, and a heavy build: ALMA never needs it.
EXCLUDED = {"bdsf"}
# Weblog plots (casaplotms) and the `recipes` helpers of old restore scripts.
# --no-deps: both require casatasks, which must stay the venv's (CASA is not
# duplicated); their other requirements, grpcio and protobuf, are listed here.
NO_DEPS = ("casaplotms==2.9.1", "casarecipes==0.4.0")
EXTRA = ("grpcio==1.85.3", "protobuf==7.36.2")
# What the release's requirements pull in without pinning it: pinned too, so two
# builds of one release give the same layer (checked with 2025.1.1.61).
TRANSITIVE_PINS = ("astropy-iers-data==0.2026.11.2.0.34.55", "markupsafe==3.0.4", "packaging==26.3",
                   "pyerfa==2.0.1.5", "pyyaml==6.0.4", "sortedcontainers==2.4.0", "typing-extensions==4.16.0")
# astropy (in the pipeline) would fetch IERS tables from the internet on first use; a
# CASA child never touches the network, so the layer's astropy config forbids it
# (CASA's own measures come from casadata).
ASTROPY_CFG = """[utils.data]
allow_internet = False

[utils.iers.iers]
auto_download = False
iers_degraded_accuracy = warn
"""
# What must never be in a layer: CASA itself comes from the modular CASA.
CASA_PACKAGES = ("casatools", "casatasks", "casaconfig", "casadata")
LAUNCHER = "bin/python"
INFO = "layer.json"
PIP_TIMEOUT_S = 1800

_VERSION_RE = re.compile(r"""^\s*version\s*=\s*['"]([^'"]+)['"]""", re.M)


@dataclass(frozen=True)
class PipelineLayer:
    """A built layer: where it is and what it runs."""

    path: Path
    release: str            # the pipeline's version (pipeline/_version.py)
    casa_version: str       # the modular CASA it runs on
    built: bool             # False: an existing layer was reused

    @property
    def launcher(self) -> Path:
        return self.path / LAUNCHER

    def info(self) -> dict:
        return json.loads((self.path / INFO).read_text())


# ---------------------------------------------------------------- the release

def _find_root(folder: Path) -> Path:
    """The folder holding the `pipeline` package: `folder` itself or one level down
    (a release tarball unpacks to pipeline-src/)."""
    candidates = [folder] + (sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else [])
    roots = [p for p in candidates if (p / "pipeline" / "__init__.py").is_file()]
    if not roots:
        raise CasaError(f"{folder}: no pipeline/__init__.py in it or one level down: not a pipeline release")
    return roots[0]


def _tree_hash(root: Path) -> str:
    """The content of a source tree: every file's relative path and bytes, caches excluded."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and ".git" not in p.parts:
            h.update(str(p.relative_to(root)).encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _file_hash(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def release_kind(path: Path) -> str:
    if path.is_dir():
        return "tree"
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tarball"
    if path.is_file() and path.suffix == ".whl":
        return "wheel"
    raise CasaError(f"{path}: not a pipeline release (a source tree, a .tar.gz of one, or a wheel)")


def source_hash(path: Path) -> str:
    """What identifies a release: the archive's bytes, or a tree's pipeline/ and requirements.txt."""
    if release_kind(path) != "tree":
        return _file_hash(path)
    root = _find_root(path)
    h = hashlib.sha256(_tree_hash(root / "pipeline").encode())
    req = root / "requirements.txt"
    h.update(req.read_bytes() if req.is_file() else b"")
    return h.hexdigest()


def cache_key(path: Path, python: str) -> str:
    """Same release, same overrides, same Python -> same key -> the same layer."""
    doc = {"format": LAYER_FORMAT, "source": source_hash(path), "overrides": OVERRIDES,
           "excluded": sorted(EXCLUDED), "no_deps": NO_DEPS, "extra": EXTRA, "pins": TRANSITIVE_PINS,
           "python": python}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _unpack_source(path: Path, src: Path, scratch: Path, python: str) -> list:
    """Put the release's `pipeline` package into src/; return its requirement lines."""
    kind = release_kind(path)
    if kind == "wheel":
        _pip(python, ["install", "--no-deps", "--no-compile", "--target", str(src), str(path)], "the pipeline wheel")
        meta = next(src.glob("*.dist-info/METADATA"), None)
        text = meta.read_text() if meta else ""
        return [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Requires-Dist:")]
    if kind == "tarball":
        try:
            with tarfile.open(path) as tar:
                # 'data': no absolute paths, no members outside, no links out, no devices.
                tar.extractall(scratch, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise CasaError(f"{path}: cannot unpack the pipeline release: {exc}") from None
        root = _find_root(scratch)
    else:
        root = _find_root(path)
    src.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(root / "pipeline", src / "pipeline", ignore=ignore, symlinks=False)
    for name in ("requirements.txt", "LICENSE.md"):  # LGPL: the licence travels with the code
        if (root / name).is_file():
            shutil.copy2(root / name, src / name)
    req = src / "requirements.txt"
    return req.read_text().splitlines() if req.is_file() else []


def read_release(src: Path) -> str:
    """The pipeline's version, from pipeline/_version.py (read as text, not executed)."""
    vfile = src / "pipeline" / "_version.py"
    m = _VERSION_RE.search(vfile.read_text()) if vfile.is_file() else None
    if not m:
        raise CasaError(f"{vfile}: no version = '...' line: cannot tell which pipeline release this is")
    return m.group(1)


# ---------------------------------------------------------------- dependencies

def layer_requirements(lines) -> list:
    """The release's requirements with OVERRIDES and EXCLUDED applied, plus EXTRA."""
    out, seen = [], set()
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if not text or text.startswith("-"):
            continue
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise CasaError(f"the pipeline's requirement {text!r} is not valid: {exc}") from None
        name = req.name.lower()
        if name in EXCLUDED or (req.marker and "extra" in str(req.marker)):
            continue
        seen.add(name)
        if name not in OVERRIDES:
            out.append(text)
    out += list(OVERRIDES.values())  # always: they are what the pipeline runs with here
    out += [e for e in EXTRA if Requirement(e).name.lower() not in seen]
    return out


def _pip_env() -> dict:
    """pip's settings that would send the install elsewhere than --target (the Airflow
    image sets PIP_USER=true, which pip refuses together with --target)."""
    return {k: v for k, v in os.environ.items() if k not in ("PIP_USER", "PIP_TARGET", "PIP_PREFIX", "PIP_ROOT")}


def _pip(python, args, what):
    """pip of the modular CASA's Python: the binary wheels must fit the Python that runs them."""
    cmd = [python, "-m", "pip", "--disable-pip-version-check", *args]
    log.info("pipeline layer: pip %s", " ".join(args))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, env=_pip_env())
    except subprocess.TimeoutExpired:
        raise CasaError(f"pip install of {what} took more than {PIP_TIMEOUT_S} s") from None
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise CasaError(f"pip install of {what} failed: {tail}")


def _install_deps(deps: Path, requirements: list, python: str):
    """Into deps/ only: pip --target never touches the venv (it ignores what the venv holds)."""
    pins = deps.parent / "pins.txt"
    pins.write_text("".join(p + "\n" for p in TRANSITIVE_PINS))
    target = ["install", "--no-compile", "--target", str(deps)]
    _pip(python, [*target, "-c", str(pins), *requirements], "the pipeline's requirements")
    _pip(python, [*target, "--no-deps", *NO_DEPS], ", ".join(NO_DEPS))
    # Old restore scripts do `from recipes.almahelpers import fixsyscaltimes`
    # (monolithic CASA's package); casarecipes has the same modules.
    (deps / "recipes").mkdir()
    (deps / "recipes" / "__init__.py").write_text(
        '"""Monolithic CASA\'s `recipes`, served by the casarecipes package (alma-regen pipeline layer)."""\n'
        "import casarecipes as _casarecipes\n\n"
        "__path__ = list(_casarecipes.__path__)\n")
    inside = [p for p in CASA_PACKAGES if (deps / p).exists()]
    if inside:
        raise CasaError(f"the pipeline layer would hold its own {', '.join(inside)}: CASA must come from the "
                        "modular CASA (a requirement pulled it in; add it to NO_DEPS)")


def _launcher_text(layer: Path, python: str) -> str:
    q = shlex.quote
    return f"""#!/bin/sh
# alma-regen pipeline CASA: the modular CASA's Python with the pipeline layer on its path.
# Made by alma_regen.casa.pipeline_layer; rebuilt, not edited.
export PYTHONPATH={q(str(layer / "deps"))}:{q(str(layer / "src"))}
# casaplotms' generated protobuf code needs the pure-Python protobuf.
export PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python
# The layer's astropy.cfg: no downloads (IERS tables) from inside CASA.
export XDG_CONFIG_HOME={q(str(layer / "config"))}
PY={q(python)}

# Weblog plots (plotms) need an X display: a private Xvfb for this --pipeline run when
# Debian's xvfb is installed. -displayfd lets Xvfb pick a free display itself (no race
# between runs, unlike xvfb-run -a). If it does not come up within 10 s the run goes on
# without a display and the weblog lacks its plotms plots: never a failed run.
with_xvfb() {{
  dfile=$(mktemp) || return 1
  Xvfb -displayfd 3 -screen 0 1280x1024x24 -nolisten tcp 3>"$dfile" >/dev/null 2>&1 &
  xpid=$!
  n=0
  while [ ! -s "$dfile" ] && [ $n -lt 100 ] && kill -0 $xpid 2>/dev/null; do sleep 0.1; n=$((n+1)); done
  if [ ! -s "$dfile" ]; then kill $xpid 2>/dev/null; rm -f "$dfile"; return 1; fi
  DISPLAY=":$(head -n 1 "$dfile")"; export DISPLAY
  rm -f "$dfile"
  "$PY" "$@"; rc=$?
  kill $xpid 2>/dev/null
  exit $rc
}}
case " $* " in
  *" --pipeline "*)
    if [ -z "$DISPLAY" ] && command -v Xvfb >/dev/null 2>&1; then with_xvfb "$@"; fi ;;
esac
exec "$PY" "$@"
"""


def _size(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


# ---------------------------------------------------------------- the layer

def _build(tmp: Path, release: Path, layers: Path, key: str, casa_python: str, casa_version: str) -> dict:
    """Everything of a layer, in `tmp` (renamed into place by the caller); returns its info."""
    reqs = _unpack_source(release, tmp / "src", tmp / "unpack", casa_python)
    shutil.rmtree(tmp / "unpack", ignore_errors=True)
    version = read_release(tmp / "src")
    _install_deps(tmp / "deps", layer_requirements(reqs), casa_python)
    (tmp / "config" / "astropy").mkdir(parents=True)
    (tmp / "config" / "astropy" / "astropy.cfg").write_text(ASTROPY_CFG)
    (tmp / "bin").mkdir()
    launcher = tmp / LAUNCHER
    # The launcher names the layer's final place: the rename keeps it right.
    launcher.write_text(_launcher_text(layers / f"pipeline-{version}-{key[:16]}", casa_python))
    launcher.chmod(0o755)
    return {"release": version, "key": key, "source": str(release), "casa_version": casa_version,
            "casa_python": casa_python, "overrides": OVERRIDES, "excluded": sorted(EXCLUDED),
            "no_deps": list(NO_DEPS), "size_bytes": _size(tmp),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def find_layer(layers: Path, key: str) -> Path | None:
    for p in sorted(Path(layers).glob(f"pipeline-*-{key[:16]}")):
        info = p / INFO
        if info.is_file() and (p / LAUNCHER).is_file() and json.loads(info.read_text()).get("key") == key:
            return p
    return None


def build_layer(release, layers, casa_python: str, casa_version: str) -> PipelineLayer:
    """The layer for `release` under `layers`: reused when already built, else built.

    casa_python: the modular CASA's Python the launcher starts (the layer's
    binary packages are for its version); casa_version: its CASA version.
    """
    release, layers = Path(release).resolve(), Path(layers).resolve()
    if not release.exists():
        raise CasaError(f"{release}: no such pipeline release")
    key = cache_key(release, casa_python)
    found = find_layer(layers, key)
    if found is not None:
        info = json.loads((found / INFO).read_text())
        log.info("pipeline layer %s: already built (%s)", info["release"], found)
        return PipelineLayer(found, info["release"], info["casa_version"], built=False)
    t0 = time.monotonic()
    try:
        layers.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=layers))
    except OSError as exc:
        raise CasaError(f"cannot build a pipeline layer in {layers}: {exc}") from None
    try:
        info = _build(tmp, release, layers, key, casa_python, casa_version)
        info["build_s"] = round(time.monotonic() - t0, 1)
        (tmp / INFO).write_text(json.dumps(info, indent=1))
        final = layers / f"pipeline-{info['release']}-{key[:16]}"
        try:
            tmp.rename(final)
        except OSError:
            if find_layer(layers, key) is None:
                raise
            # Another build of the same release finished first: use that one.
            shutil.rmtree(tmp)
            return PipelineLayer(final, info["release"], casa_version, built=False)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CasaError(f"cannot build a pipeline layer in {layers}: {exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("pipeline layer %s built in %.0f s, %.0f MB: %s", info["release"], info["build_s"],
             info["size_bytes"] / 1e6, final)
    return PipelineLayer(final, info["release"], casa_version, built=True)


def default_layers_dir() -> Path:
    """<workdir>/casa-layers: the working folder every worker of a deployment shares."""
    from ..config import settings
    return Path(settings().workdir) / "casa-layers"


def add_pipeline(release, layers=None, registry=None) -> dict:
    """`alma-regen casa-versions add-pipeline`: build (or reuse) the layer on the
    default modular CASA and register it, replacing an entry of the same release
    and CASA version. Returns what was done."""
    from .registry import CasaVersion, default_modular, registry_file, save_entry
    casa = default_modular()
    if casa is None:
        raise CasaError("no modular CASA (casatools, casatasks) in this Python: a pipeline layer needs one")
    target = Path(registry) if registry else registry_file()  # before the build: fail fast
    layer = build_layer(release, layers or default_layers_dir(), casa.executable, str(casa.version))
    entry = {"kind": "modular", "executable": str(layer.launcher), "version": layer.casa_version,
             "pipeline": layer.release}

    def same_release(e):
        return (isinstance(e, dict) and e.get("kind") == "modular" and e.get("pipeline") == layer.release
                and CasaVersion.parse(e.get("version")) == casa.version)

    save_entry(target, entry, same_release)
    info = layer.info()
    return {"registry": str(target), "entry": entry, "layer": str(layer.path), "built": layer.built,
            "build_s": info["build_s"], "size_bytes": info["size_bytes"]}
