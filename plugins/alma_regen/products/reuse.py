"""Is this MOUS already published with the same inputs and CASA? (the `force` param)

A published run's manifest lists its inputs (archive file names, sizes and
sha256 as staged) and the CASA of its calibration. A MOUS is not regenerated
again when the archive lists the same files with the same sizes and the CASA
that would run now is the one recorded, unless forced. Sizes, not checksums,
are compared before staging: the archive publishes no checksums (its DataLink rows carry none),
and a changed file of unchanged size is caught by the staging stamps.
"""
import logging

log = logging.getLogger(__name__)


def same_as_published(manifest: dict | None, files: dict, casa_version: str) -> tuple:
    """(True, why) when `files` {name: size} and `casa_version` match the manifest."""
    if not manifest:
        return False, "not published yet"
    published = {i["file"]: i["size"] for i in manifest.get("inputs", []) if i.get("file")}
    if published != files:
        changed = sorted(set(published.items()) ^ set(files.items()))
        return False, f"inputs changed since run {manifest.get('run')}: {', '.join(n for n, _ in changed[:3])}"
    casa = ((manifest.get("engines") or {}).get("calibration") or {}).get("casa")
    if casa != casa_version:
        return False, f"published with CASA {casa}, now CASA {casa_version}"
    return True, f"published as run {manifest.get('run')} with the same inputs and CASA {casa}"


def current_casa() -> str:
    """The CASA the default (native) calibration would use now."""
    from ..casa.registry import load_registry
    return str(load_registry().modular().version)
