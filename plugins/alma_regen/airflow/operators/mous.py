"""What the operators that work in a MOUS's member folder share: `mous_uid` and `workdir`.

The DAG gives both as templated fields (`mous_uid="{{ params.mous_uid }}"`, the workdir of
the settings); the task builds the MOUS's `Member` (alma_regen.member) once, after its
fields are rendered, and hands it to the library. A member folder may be given instead
(`member_dir=`, for a task made by hand or in a test): its MOUS is read from its name.
"""
from __future__ import annotations

from typing import Sequence

from airflow.sdk import BaseOperator


def truthy(value, default: bool = False) -> bool:
    """A templated boolean param as a bool: "True"/"False" once rendered as text, or a bool when
    rendered natively; `default` for anything that is neither (publish is on unless said off)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    return default


def spacesaving_of(value) -> int:
    """The run's SPACESAVING param (rendered "1") as the calibration reads it (calibrated.Options
    checks it): the plan and the calibration judge one SPACESAVING."""
    from ...calibrated import Options
    return Options(spacesaving=value).spacesaving


def run_listing(op, context, source):
    """The archive's listing of `op`'s MOUS for this DAG run (alma_regen.staging.run_listing):
    asked by the run's first step that needs it, read from the workdir by its later steps; a
    retry (try 2 on, a cleared task) asks afresh. Without a run in the context (a task made by
    hand, a test's execute()), asked now and not kept."""
    from ...staging.run_listing import run_listing as listing_of_run
    ti = context.get("ti") if context else None
    tries = getattr(ti, "try_number", None) or 1
    index = getattr(ti, "map_index", None)
    by = op.task_id + (f"[{index}]" if isinstance(index, int) and index >= 0 else "")
    return listing_of_run(source, op.mous_uid, op.workdir, (context or {}).get("run_id"), fresh=tries > 1, by=by)


class MousFields:
    """Mixin: `mous_uid`, `workdir` and the task's `member`."""

    def _set_mous(self, mous_uid: str | None, workdir: str | None, member_dir=None) -> None:
        if member_dir is not None:
            from ...member import Member
            m = Member.at(member_dir)  # a PermanentError for a folder not named member.<MOUS>
            mous_uid, workdir = m.mous, str(m.workdir)
        if not mous_uid or not workdir:
            raise TypeError(f"{type(self).__name__} needs mous_uid and workdir (or member_dir)")
        self.mous_uid, self.workdir = mous_uid, workdir

    @property
    def member(self):
        """The MOUS's member folder (alma_regen.member.Member): built once per task, from the
        rendered fields (again only if they change)."""
        key = (str(self.workdir), str(self.mous_uid))
        if getattr(self, "_member_key", None) != key:
            from ...member import Member
            self._member, self._member_key = Member.of(self.workdir, self.mous_uid), key
        return self._member


class MousOperator(MousFields, BaseOperator):
    """An operator whose work is the MOUS's run itself (its lock, its plan, its reuse check)."""

    template_fields: Sequence[str] = ("mous_uid", "workdir")
    ui_color = "#e8f8f5"

    def __init__(self, *, mous_uid: str, workdir: str, **kwargs):
        super().__init__(**kwargs)
        self._set_mous(mous_uid, workdir)
