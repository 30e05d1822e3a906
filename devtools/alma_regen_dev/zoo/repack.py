"""Derive a delivery style from a synthesized delivery: same data, other files and packing.

`derive(synth, out, project=..., edit=...)` copies the member folder of a `synthesize()` result
(the raw ASDMs hard-linked, never written), lets the style edit the text files, and packs the
archive (synth.pack_archive: the modern auxiliary tar, or the Cycle 0-4 package). The names
(MOUS, group, EBs, sessions) are synth.make_spec's from the same seed, so nothing about the
CASA data is re-made or re-described here: one synthesis, many styles (tests derive several
styles from one session fixture).
"""
import os
import shutil
from pathlib import Path

from alma_regen import naming
from alma_regen.errors import PermanentError

from .. import synth


def spec_of(result: dict) -> dict:
    """The spec `synthesize()` made for `result` (make_spec is a function of seed, EBs and sessions)."""
    session_of = {uid: int(name.split("_")[1]) for name, uids in result["sessions"].items() for uid in uids}
    spec = synth.make_spec(result["seed"], len(result["ebs"]), 8, Path(result["member_dir"]),
                           [session_of[uid] for uid in result["ebs"]])
    if spec["mous"] != result["mous_uid"] or [e["uid"] for e in spec["ebs"]] != result["ebs"]:
        raise PermanentError(f"{result['member_dir']}: not a delivery synthesize() made with seed {result['seed']}")
    return spec


def _copy_member(src: Path, dst: Path) -> None:
    """src -> dst: raw/ hard-linked (read only, and big), everything else copied (edited next)."""
    def copy(s, d):
        if Path(s).resolve().is_relative_to((src / "raw").resolve()):
            try:
                os.link(s, d)
                return d
            except OSError:  # another filesystem
                pass
        return shutil.copy2(s, d)
    shutil.copytree(src, dst, symlinks=True, copy_function=copy)


def derive(result: dict, out, *, project: str, edit, old_package: bool = False) -> dict:
    """A new delivery under OUT (delivery/, archive/) from `result`, a synthesize() result.

    edit(spec, member): the style's changes to the copied member folder (spec["project"] is
    `project` already). Returns the JSON of synthesize(), with this delivery's paths and files."""
    out = Path(out).resolve()
    for d in ("delivery", "archive"):
        shutil.rmtree(out / d, ignore_errors=True)
    spec = spec_of(result)
    spec["project"] = project
    member = out / "delivery" / naming.member_dir(spec["mous"])
    spec["member_dir"] = str(member)
    _copy_member(Path(result["member_dir"]), member)
    edit(spec, member)
    files = synth.pack_archive(spec, member, out / "archive", old_package=old_package)
    return dict(result, project=project, files=files, archive_dir=str(out / "archive"), member_dir=str(member))


def sessions_per_eb(spec) -> list:
    return [e["session"] for e in spec["ebs"]]


def write_ppr(spec, member: Path) -> None:
    """The PPR again: it names the project (ProposalCode, RelativePath)."""
    (member / "script" / f"PPR_{spec['mous_file']}.xml").write_text(synth.ppr_xml(spec))


def write_restore_script(spec, member: Path, template: str) -> Path:
    path = member / "script" / f"member.{spec['mous_file']}.{synth.RECIPE}.casa_piperestorescript.py"
    path.write_text(synth.restore_script(synth.ebs_of(spec), sessions_per_eb(spec), template))
    return path


def synthesize_then(derive_fn, out, **synth_kwargs) -> dict:
    """A style's build(): synthesize() into OUT/synthesized/ (its truth/ stays there), derive the
    style into OUT/delivery and OUT/archive, and drop the synthesized delivery and archive (the
    derived raw/ holds hard links to the same ASDM files)."""
    out = Path(out).resolve()
    source = out / "synthesized"
    result = derive_fn(synth.synthesize(source, **synth_kwargs), out)
    for d in ("delivery", "archive"):
        shutil.rmtree(source / d, ignore_errors=True)
    return result
