"""Facts about a measurement set, read with casatools (CASA's Python only).

Used by the restore (which spws are science spws), by the checks after
calibration (columns, flag fraction) and by the tests' truth checks.
"""
import numpy as np
from casatools import msmetadata, table

SCIENCE_INTENT = "OBSERVE_TARGET#ON_SOURCE"


def science_spws(vis):
    """Spws with target data and more than 4 channels, as scriptForPI picks them."""
    md = msmetadata()
    md.open(vis)
    try:
        intents = md.intents()
        target = [i for i in intents if i.startswith("OBSERVE_TARGET")]
        spws = set()
        for intent in target:
            spws.update(int(s) for s in md.spwsforintent(intent))
        return sorted(s for s in spws if md.nchan(s) > 4)
    finally:
        md.close()


def summary(vis):
    """Columns, fields, spws and flag fraction of an MS."""
    tb = table()
    tb.open(vis)
    try:
        cols = tb.colnames()
        nrows = tb.nrows()
        field_ids = sorted(int(f) for f in np.unique(tb.getcol("FIELD_ID")))
        spw_ids = sorted(int(d) for d in np.unique(tb.getcol("DATA_DESC_ID")))
        flagged = total = 0
        for d in np.unique(tb.getcol("DATA_DESC_ID")):
            sub = tb.query("DATA_DESC_ID==%d" % d)
            f = sub.getcol("FLAG")
            flagged += int(f.sum())
            total += f.size
            sub.close()
    finally:
        tb.close()
    md = msmetadata()
    md.open(vis)
    try:
        names = list(md.fieldnames())
        # Only the fields and spws that have data rows: split keeps the others
        # in its subtables.
        fields = [names[f] for f in field_ids]
        spws = {int(md.spwfordatadesc(d)): int(md.nchan(md.spwfordatadesc(d))) for d in spw_ids}
        target_fields = list(md.fieldsforintent("OBSERVE_TARGET*", True)) if any(
            i.startswith("OBSERVE_TARGET") for i in md.intents()) else []
    finally:
        md.close()
    return {"vis": vis, "rows": nrows, "columns": cols, "fields": fields,
            "target_fields": [f for f in target_fields if f in fields],
            "spws": spws, "flag_fraction": round(flagged / total, 6) if total else 0.0}
