"""Where archive files land in the member folder, and which tar members they may hold.

Every member of an archive tar carries the delivery prefix
`<project>/science_goal.uid___A001_../group.uid___A001_../member.uid___A001_../`.
The prefix is stripped (everything up to and including the member folder), so
`<workdir>/member.<MOUS>/` receives `raw/<EB>.asdm.sdm/...` (ASDM tars),
`script/ calibration/ qa/ log/` (auxiliary tar) and `product/` (product tar).
A name with another project or MOUS, or not of that shape, is refused.

Cycle 0-4 archives have no auxiliary tar: their product tars (`PACKAGE`, the
`_<n>_of_<N>.tar` of a listing without `_auxiliary.tar`) carry script/,
calibration/, qa/ or qa2/ (Cycles 1-3), log/ and product/, and the README at the
member folder's root, named `README` in old packages (or member.<MOUS>.README.txt).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from .. import naming

_UID = r"uid___A\d{3}_X[0-9a-fA-F]+_X[0-9a-fA-F]+"
MEMBER_RE = re.compile(
    rf"^(?P<project>[^/]+)/science_goal\.(?P<sg>{_UID})/group\.(?P<group>{_UID})"
    rf"/member\.(?P<mous>{_UID})(?:/(?P<rest>.+))?$")
# Directory entries of the prefix itself (`<project>/`, `<project>/science_goal.../`, ...).
PREFIX_DIR_RE = re.compile(rf"^(?P<project>[^/]+)(?:/science_goal\.{_UID}(?:/group\.{_UID})?)?$")

AUX_TOPS = ("script", "calibration", "qa", "log")
# A product tar of an archive without auxiliary tar (Cycles 0-4): everything but raw/.
PACKAGE_TOPS = AUX_TOPS + ("qa2", "product")
ASDM, AUXILIARY, PRODUCT, README = "asdm", "auxiliary", "product", "readme"
PACKAGE = "package"
# The README as old packages hold it at the member folder's root (`README`, no prefix),
# besides the archive's own name (naming.readme_name).
PACKAGE_READMES = ("README", "README.txt")


def member_path(workdir, mous: str) -> Path:
    """`<workdir>/member.<MOUSfile>/`: the folder a MOUS is staged into."""
    return Path(workdir) / naming.member_dir(mous)


class MemberLayout:
    """The tar-member mapper of one archive file (see tarstream.Mapper).

    Returns the path relative to the extraction root: the ASDM folder for an
    ASDM tar, the member folder for the auxiliary and product tars.
    """

    def __init__(self, kind: str, project: str, mous: str, eb: Optional[str] = None):
        self.kind, self.project = kind, project
        self.mous = naming.uid_to_file(mous)
        self.asdm = naming.asdm_dir(eb) if eb else None
        self._sg_group = None  # all members must share one science goal and group

    def __call__(self, name: str, is_dir: bool) -> Optional[str]:
        m = MEMBER_RE.match(name)
        if not m:
            p = PREFIX_DIR_RE.match(name)
            if is_dir and p and p["project"] == self.project:
                return None
            raise ValueError(f"not under {self.project}/science_goal.../group.../member.{self.mous}/")
        if m["project"] != self.project:
            raise ValueError(f"belongs to project {m['project']}, not {self.project}")
        if m["mous"] != self.mous:
            raise ValueError(f"belongs to member.{m['mous']}, not member.{self.mous}")
        sg_group = (m["sg"], m["group"])
        if self._sg_group is None:
            self._sg_group = sg_group
        elif sg_group != self._sg_group:
            raise ValueError("science goal/group differ from the archive's other members")
        rest = m["rest"]
        if rest is None:
            if is_dir:
                return None
            raise ValueError("a file where the member folder should be")
        return self._rest(rest, is_dir)

    def _rest(self, rest: str, is_dir: bool) -> Optional[str]:
        top = rest.split("/", 1)[0]
        if self.kind == ASDM:
            root = f"raw/{self.asdm}"
            if rest == "raw" and is_dir:
                return None
            if rest == root and is_dir:
                return ""
            if rest.startswith(root + "/"):
                return rest[len(root) + 1:]
            raise ValueError(f"outside raw/{self.asdm}/")
        allowed = {AUXILIARY: AUX_TOPS, PACKAGE: PACKAGE_TOPS}.get(self.kind, ("product",))
        if top in allowed:
            return rest
        if self.kind == PACKAGE and not is_dir and rest in (*PACKAGE_READMES, f"member.{self.mous}.README.txt"):
            return rest
        raise ValueError(f"outside {', '.join(t + '/' for t in allowed)} of the {self.kind} tar")
