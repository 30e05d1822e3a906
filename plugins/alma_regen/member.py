"""The member folder of one MOUS, `<workdir>/member.<MOUS>/`, and every path in it.

Staging fills it, each later step reads and writes in it:

    README             member.<MOUS>.README.txt (the CASA version of the reduction)
    raw/               the ASDMs, `<EB>.asdm.sdm/`, with staging's hidden stamps beside them
    script/ calibration/ qa/ log/   the auxiliary tar: scripts, PPR, calibration tables, QA2 report
    product/           the delivered products (what fidelity compares with)
    calibrated/        the calibrated MSs; working/ under it; calibration.json
    imaging/           the regenerated images (products/), imaging.json, fidelity.json, thumbnails/
    .calibration-plan.json   the calibration plan of the run (made once, read by every later step)
    .alma-regen-step   the step a run is in (alma_regen.steps)
    .<archive file>.staged.json   staging's stamps of the README, auxiliary and product tars

A `Member` is made once per step, from the MOUS uid and the workdir (`Member.of`, what the
DAG's operators have) or from the folder (`Member.at`, what a command is given), and handed
down: every module asks it for its paths instead of joining names of its own, and its
`delivery` (the delivery model of the folder) is read once per step.

A folder whose name is not `member.<MOUS>` (a command run on a copy, a test's folder) is
still a Member through `Member.coerce`, with `mous` None: the steps that need the MOUS say so.
This module does not import Airflow, and imports the delivery model only when it is asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from . import naming
from .errors import PermanentError

STAMP_SUFFIX = ".staged.json"
CALIBRATION_PLAN = ".calibration-plan.json"


@dataclass(frozen=True)
class Member:
    """member.<MOUS>/: `root` the folder, `mous` its MOUS uid (uid://A001/...), None when the folder's
    name does not say (see `coerce`)."""

    root: Path
    mous: str | None = None

    # ------------------------------------------------------------ making one
    @classmethod
    def of(cls, workdir, mous: str) -> "Member":
        """The member folder of `mous` (either uid form) in `workdir`; a PermanentError for a bad uid."""
        uid = naming.file_to_uid(naming.uid_to_file(mous))
        return cls(Path(workdir) / naming.member_dir(uid), uid)

    @classmethod
    def at(cls, path) -> "Member":
        """The member folder at `path`, its MOUS read from its name (`member.uid___A001_X..._X...`);
        a PermanentError for a folder of another name."""
        if isinstance(path, Member):
            path = path.root
        p = Path(path)
        uid = naming.mous_of_member_dir(p.name)
        if uid is None:
            raise PermanentError(f"{p} is not a member folder: its name must be member.<MOUS> "
                                 "(member.uid___A001_X..._X...)")
        return cls(p, uid)

    @classmethod
    def coerce(cls, member) -> "Member":
        """`member` as a Member: a Member as it is, a path as its Member (`mous` None when the
        folder's name is not member.<MOUS>). What the public entry points do with what they are given."""
        if isinstance(member, Member):
            return member
        if member is None:
            raise PermanentError("no member folder given")
        p = Path(member)
        return cls(p, naming.mous_of_member_dir(p.name))

    def __fspath__(self) -> str:
        return str(self.root)

    def __str__(self) -> str:
        return str(self.root)

    # ------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return self.root.name

    @property
    def workdir(self) -> Path:
        """The working folder holding the member folder (where the MOUS locks are)."""
        return self.root.parent

    @property
    def mous_file(self) -> str | None:
        """The MOUS in file form (uid___A001_X1296_X133), None when unknown."""
        return naming.uid_to_file(self.mous) if self.mous else None

    # ------------------------------------------------------------ what staging brings
    @property
    def readme(self) -> Path | None:
        """member.<MOUS>.README.txt, as the archive names it (None when the MOUS is unknown)."""
        return self.root / naming.readme_name(self.mous) if self.mous else None

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    def asdm(self, eb: str) -> Path:
        """raw/<EB>.asdm.sdm, the ASDM of one EB (either uid form)."""
        return self.raw / naming.asdm_dir(eb)

    @property
    def script(self) -> Path:
        return self.root / "script"

    @property
    def calibration(self) -> Path:
        """calibration/: the delivered calibration tables, apply files and pipeline manifest."""
        return self.root / "calibration"

    @property
    def qa(self) -> Path:
        return self.root / "qa"

    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def product(self) -> Path:
        """product/: the images the observatory delivered."""
        return self.root / "product"

    def staging_base(self, archive_file: str, eb: str | None = None) -> Path:
        """Where staging keeps the bookkeeping of one archive file (this + .staged.json, .partial,
        .lock): raw/.<EB>.asdm.sdm for an EB's ASDM, .<archive file> in the member folder else."""
        if eb is not None:
            return self.raw / f".{naming.asdm_dir(eb)}"
        return self.root / f".{archive_file}"

    def stamps(self) -> list:
        """The stamps staging left (one per archive file staged here), sorted."""
        return sorted(list(self.root.glob(f".*{STAMP_SUFFIX}")) + list(self.raw.glob(f".*{STAMP_SUFFIX}")))

    # ------------------------------------------------------------ what the steps make
    @property
    def calibrated(self) -> Path:
        return self.root / "calibrated"

    @property
    def working(self) -> Path:
        """calibrated/working/: the MSs a calibration works on."""
        return self.calibrated / "working"

    @property
    def calibration_summary(self) -> Path:
        """calibrated/calibration.json."""
        return self.calibrated / "calibration.json"

    @property
    def calibration_plan(self) -> Path:
        """The calibration plan of a DAG run (not in calibrated/: scriptForPI refuses an existing one)."""
        return self.root / CALIBRATION_PLAN

    @property
    def imaging(self) -> Path:
        return self.root / "imaging"

    @property
    def imaging_products(self) -> Path:
        """imaging/products/: the regenerated FITS images."""
        return self.imaging / "products"

    @property
    def imaging_record(self) -> Path:
        return self.imaging / "imaging.json"

    @property
    def fidelity_record(self) -> Path:
        return self.imaging / "fidelity.json"

    @property
    def thumbnails(self) -> Path:
        return self.imaging / "thumbnails"

    @property
    def step_note(self) -> Path:
        """The note of the step a run is in (alma_regen.steps)."""
        from .steps import STEP_FILE
        return self.root / STEP_FILE

    # ------------------------------------------------------------ the delivery model
    @cached_property
    def delivery(self):
        """The delivery model of the folder (alma_regen.delivery.Delivery), made on first use and
        kept: it lists script/ when made, so a step that changes script/ calls `forget_delivery`."""
        from .delivery import Delivery
        return Delivery(self.root)

    def forget_delivery(self) -> None:
        """The next `delivery` is read afresh (script/ changed under this step)."""
        self.__dict__.pop("delivery", None)
