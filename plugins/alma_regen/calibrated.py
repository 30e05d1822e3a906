"""What every calibration engine shares: the options (scriptForPI's globals and ours) and
the calibrated/ folder they fill.

Apart from calibration.py (which decides and runs the engines) so that the engine of
the delivery's own scriptForPI (scriptforpi.py) can use them without importing the
module that dispatches to it.
"""
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import PermanentError
from .member import Member

log = logging.getLogger(__name__)

ENGINES = ("auto", "native", "scriptforpi", "pipeline", "manual")
# The DAG's form says what an operator wants ("restore": apply the delivered calibration);
# the engine that does it has its own name.
FORM_NAMES = {"restore": "native"}


@dataclass
class Options:
    """The scriptForPI globals and our own knobs (the DAG's params)."""

    engine: str = "auto"
    casa_version: str | None = None   # override; empty: from the README
    dosplit: bool = False
    spacesaving: int = 1
    docontsub: bool = False
    timeout_s: float | None = None

    def __post_init__(self):
        self.engine = FORM_NAMES.get(self.engine, self.engine)
        if self.engine not in ENGINES:
            raise PermanentError(f"calibration engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        try:
            self.spacesaving = int(self.spacesaving)
        except (TypeError, ValueError):
            raise PermanentError(f"SPACESAVING must be an integer, not {self.spacesaving!r}") from None


def calibrated_dir(member) -> Path:
    """calibrated/ of a member folder (a Member or its path): `Member.calibrated`."""
    return Member.coerce(member).calibrated


def set_aside(path: Path) -> Path | None:
    """Move a folder out of the way with a timestamp; never delete it."""
    if not path.exists() and not path.is_symlink():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.previous-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.previous-{stamp}-{n}")
        n += 1
    path.rename(target)
    log.warning("moved the earlier %s aside to %s", path.name, target.name)
    return target
