"""Where the non-Python parts of the product live.

include/ (CASA site config, scripts that run inside CASA's Python) sits beside
plugins/ in the repository and in the Airflow image; ALMA_REGEN_INCLUDE moves it.
"""
from pathlib import Path


def include_dir() -> Path:
    from .config import settings
    env = settings().include  # $ALMA_REGEN_INCLUDE
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "include"


def casa_script(name: str) -> Path:
    """A script of include/casa_scripts/, run by a CASA child process."""
    p = include_dir() / "casa_scripts" / name
    if not p.is_file():
        raise FileNotFoundError(f"alma-regen installation is missing {p}")
    return p


def site_config() -> Path:
    return include_dir() / "casa" / "casasiteconfig.py"
