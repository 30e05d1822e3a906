"""The environment of every CASA child process.

Built from an allow-list, never from the worker's environment minus a
deny-list: CASA children run delivery code from the archive, and the worker's
environment holds secrets (AWS_*, the request handler's cookie, AIRFLOW_CONN_*,
Airflow's own configuration). Only what CASA needs to run passes, and the
variables a caller gives (`extra`, recorded in the step's record).

CASA must never touch the network: CASASITECONFIG points casaconfig at our
site config (measures from the casadata package, every auto-update off), and
ALMA_REGEN_OFFLINE makes include/casa_scripts/casa_boot.py refuse any socket
the child might still open; the sandbox (casa/sandbox.py) gives it no network.
"""
import os

from ..paths import include_dir, site_config

# Taken from the worker's environment when set: nothing secret.
_PASS = ("PATH", "LANG", "LANGUAGE", "TZ", "OMP_NUM_THREADS")
_PASS_PREFIX = ("LC_",)


def child_env(extra: dict | None = None, *, home: str | None = None, sandbox: str | None = None) -> dict:
    """home: HOME (and TMPDIR) of the child: the sandbox's private /tmp; None keeps the worker's HOME
    (no sandbox). sandbox: the sandbox mode, recorded as ALMA_REGEN_SANDBOX."""
    env = {k: v for k, v in os.environ.items() if k in _PASS or k.startswith(_PASS_PREFIX)}
    env.setdefault("PATH", os.defpath)
    if home:
        env["HOME"] = env["TMPDIR"] = home
    elif os.environ.get("HOME"):
        env["HOME"] = os.environ["HOME"]
    env["CASASITECONFIG"] = str(site_config())
    env["ALMA_REGEN_INCLUDE"] = str(include_dir())
    env["ALMA_REGEN_OFFLINE"] = "1"
    if sandbox:
        env["ALMA_REGEN_SANDBOX"] = sandbox
    # Headless workers: matplotlib inside CASA must not look for a display.
    env["MPLBACKEND"] = "Agg"
    # One thread per CASA child: parallelism comes from mapped tasks, and
    # oversubscribed OpenMP on 2 cores is slower, not faster.
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env
