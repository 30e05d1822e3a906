"""The record of the PPR's EBs the archive lacks, in the member folder (`.missing-ebs.json`).

Staging writes it (stage.ebs_to_stage: [{eb, file, archive}], `archive` what the archive said,
e.g. its DataLink error row, or "not listed") and clears it when every EB is there; the plan
(delivery.raw_state) quotes it in its warnings and the published manifest in `partial.reasons`.
A module of its own, importing neither the member nor the delivery model: both read it.
"""
import json
import logging
from pathlib import Path

from ..jsonstore import write_atomic

log = logging.getLogger("alma_regen.staging")

MISSING_EBS = ".missing-ebs.json"


def write_missing_ebs(member_dir, missing: list) -> None:
    """Record (or, for [], clear) the PPR EBs the archive lacks: [{eb, file, archive}]."""
    path = Path(member_dir) / MISSING_EBS
    if not missing:
        path.unlink(missing_ok=True)
        return
    write_atomic(path, {"missing_ebs": missing}, what="the record of the EBs the archive lacks")


def read_missing_ebs(member_dir) -> list:
    """The record `write_missing_ebs` left: [{eb, file, archive}], [] when there is none."""
    path = Path(member_dir) / MISSING_EBS
    try:
        return list(json.loads(path.read_text()).get("missing_ebs", []))
    except FileNotFoundError:
        return []
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("%s: unreadable (%s): no record of EBs the archive lacks", path, exc)
        return []
