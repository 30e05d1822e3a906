"""The environment of every CASA child process.

CASA must never touch the network: CASASITECONFIG points casaconfig at our
site config (measures from the casadata package, every auto-update off), and
ALMA_REGEN_OFFLINE makes include/casa_scripts/casa_boot.py refuse any socket
the child might still open.
"""
import os

from ..paths import include_dir, site_config

# Variables that must not leak from the worker into CASA.
_DROP = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "CASASITECONFIG", "MPLBACKEND")


def child_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _DROP and not k.startswith("AIRFLOW__")}
    env["CASASITECONFIG"] = str(site_config())
    env["ALMA_REGEN_INCLUDE"] = str(include_dir())
    env["ALMA_REGEN_OFFLINE"] = "1"
    # Headless workers: matplotlib inside CASA must not look for a display.
    env["MPLBACKEND"] = "Agg"
    env.pop("DISPLAY", None)
    # One thread per CASA child: parallelism comes from mapped tasks, and
    # oversubscribed OpenMP on 2 cores is slower, not faster.
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env
