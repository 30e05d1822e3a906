"""Native restore of one execution block, as hifa_restoredata does it (CASA's Python).

Usage: python restore_eb.py JOB.json RESULT.json

JOB: {"eb", "session", "asdm", "workdir", "calapply", "flagversions", "caltables",
      "parang": bool (applycal's, decided for the whole MOUS: hifa_restoredata applies with
      parang=True once any caltable to apply was made by hifa_polcal),
      "split": bool, "reindex": bool (mstransform's, decided for the whole MOUS),
      "science_spws": [ids] or null (as read from the ASDM: the MS must have these),
      "split_spws": "0,1" or null (science spws chosen here)}

importasdm as hifa_restoredata calls it (its options, its `asis` ASDM_* tables,
then its copies of Source.xml, SpectralWindow.xml and DataDescription.xml into
the MS) -> drop the default flag backup, unpack <EB>.ms.flagversions.tgz and
restore `Pipeline_Final` -> unpack this EB's caltables from its session's
tarball, with the session's own (hifa_polcal's `<session>_polcalib.ms.*`) ->
replay calapply.txt (parsed as data, never executed) line by line
with hifa_restoredata's selection: the pipeline intents of `intent=` mapped to
the obs_modes of this MS's STATE table, cross-correlations only, science spws
only; a line that would select no data is an error naming the line, never a
silent empty apply -> CORRECTED_DATA holds the calibrated data; optionally
split into <EB>.ms.split.cal as scriptForPI does: mstransform of the science
spws (OBSERVE_TARGET data, more than 4 channels), every field, the corrected
column, `reindex` as the job says (scriptForPI v1.23/v1.34 keep the ids, v2.5
renumbers only when the EBs' science spws differ). (Measured:
bit-identical CORRECTED_DATA and FLAG to the real hifa_restoredata, which
applies all lines at once through a CASA callibrary.) The worker-side code
(alma_regen.calibration) prepares the folders and judges the result.
This file must not import airflow or alma_regen.
"""
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import casa_boot  # noqa: E402

from casatasks import applycal, flagmanager, importasdm, mstransform  # noqa: E402
from casatools import ms as mstool, msmetadata, table  # noqa: E402

import almaopts  # noqa: E402
import calapply_parse  # noqa: E402
import confined  # noqa: E402
import msinfo  # noqa: E402

casa_boot.casa_log_to_console()


class RestoreError(RuntimeError):
    pass


def import_asdm(asdm, vis):
    """importasdm as hifa_restoredata calls it, then its copies of ASDM files into the MS."""
    importasdm(asdm=asdm, vis=vis, asis=almaopts.PIPELINE_ASIS, **almaopts.IMPORTASDM_OPTIONS)
    for name in almaopts.PIPELINE_XML_COPIES:
        src = os.path.join(asdm, name)
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(vis, name))


def ms_selection(vis):
    """What the intent and spw mapping need from the MS: STATE obs_modes, and per spw
    its channel count and the obs_modes observed in it."""
    md = msmetadata()
    md.open(vis)
    try:
        modes = [str(m) for m in md.intents()]
        nchan = {s: int(md.nchan(s)) for s in range(md.nspw())}
        by_spw = {s: [m for m in modes if s in set(md.spwsforintent(m))] for s in nchan}
    finally:
        md.close()
    return modes, calapply_parse.science_spws(nchan, by_spw)


def as_the_pipeline_applies(vis, path, lines):
    """Each parsed line with hifa_restoredata's selection: pipeline intents mapped to
    the MS's obs_modes, cross-correlations, science spws; a line that would select
    no data is an error naming the line."""
    modes, science = ms_selection(vis)
    out = []
    tool = mstool()
    tool.open(vis)
    try:
        for lineno, kwargs in lines:
            call = calapply_parse.for_casa(kwargs, modes, lineno, path)
            call["spw"] = science_only(tool, call.get("spw", ""), science, lineno, path)
            if not select(tool, {"field": call.get("field", ""), "spw": call["spw"], "scanintent": call["intent"],
                                 "baseline": call["antenna"]}, lineno, path):
                raise calapply_parse.CalapplyError(
                    path, lineno, "field=%r intent=%r spw=%r selects no data in %s: this line would apply "
                    "nothing" % (call.get("field", ""), kwargs.get("intent", ""), call["spw"], os.path.basename(vis)))
            out.append(call)
    finally:
        tool.close()
    return out


def select(tool, selection, lineno, path, onlyparse=False):
    """ms.msselect; False when nothing matches, an error naming the line when CASA cannot parse it."""
    tool.reset()
    try:
        return tool.msselect(selection, onlyparse=onlyparse)
    except Exception as exc:  # casatools raises a bare RuntimeError on a selection it cannot parse
        raise calapply_parse.CalapplyError(path, lineno, "selection %r: %s" % (selection, exc)) from None


def science_only(tool, spw, science, lineno, path):
    """The line's spw selection within the science spws (unchanged when it already is)."""
    if spw and not select(tool, {"spw": spw}, lineno, path, onlyparse=True):
        raise calapply_parse.CalapplyError(path, lineno, "spw=%r selects nothing" % spw)
    chosen = [int(s) for s in tool.msselectedindices()["spw"]] if spw else []
    if spw and set(chosen) <= set(science):
        return spw
    kept = [s for s in (chosen or science) if s in science]
    if not kept:
        raise calapply_parse.CalapplyError(path, lineno, "spw=%r holds no science spw (science: %s)"
                                           % (spw, ",".join(map(str, science)) or "none"))
    return ",".join(map(str, kept))


def spw_rows(vis):
    tb = table()
    tb.open(os.path.join(vis, "SPECTRAL_WINDOW"))
    try:
        return tb.nrows()
    finally:
        tb.close()


def asdm_subtables(vis):
    """The ASDM_* subtables importasdm copied (asis): the imaging pipeline reads them."""
    return sorted(n for n in os.listdir(vis) if n.startswith("ASDM_"))


def restore(job):
    eb, work = job["eb"], job["workdir"]
    vis = os.path.join(work, eb + ".ms")
    timings = {}
    t = time.monotonic()
    # A clean state: an earlier, interrupted attempt leaves nothing usable.
    for p in (vis, vis + ".flagversions", os.path.join(work, eb + ".ms.split.cal")):
        shutil.rmtree(p, ignore_errors=True)
    import_asdm(job["asdm"], vis)
    timings["importasdm"] = time.monotonic() - t

    t = time.monotonic()
    shutil.rmtree(vis + ".flagversions", ignore_errors=True)
    # Members confined to this EB's names, no '..', no links (include/casa_scripts/confined.py).
    confined.safe_extract(job["flagversions"], work, eb, "flagversions")
    flagmanager(vis=vis, mode="restore", versionname=almaopts.FINAL_FLAGS)
    timings["flags"] = time.monotonic() - t

    t = time.monotonic()
    session = job.get("session")
    confined.safe_extract(job["caltables"], work, eb, "caltables", session)
    calls = as_the_pipeline_applies(
        vis, job["calapply"], calapply_parse.parse_calapply_lines(job["calapply"], work, eb, session))
    for kwargs in calls:
        kwargs["parang"] = bool(job.get("parang", False))
        # Checked again right before CASA reads them: every caltable really is in the working dir.
        for table in kwargs.get("gaintable", []):
            confined.inside(table, work)
        applycal(**kwargs)
    timings["applycal"] = time.monotonic() - t

    science = msinfo.science_spws(vis)
    out = {"eb": eb, "vis": vis, "applycal_calls": len(calls), "science_spws": science,
           # The selections as applied (obs_modes, not the file's pipeline intents), for the record.
           "applied": [{k: c.get(k, "") for k in ("field", "intent", "spw", "antenna", "parang")} for c in calls],
           "summary": msinfo.summary(vis)}
    if job.get("split"):
        t = time.monotonic()
        expected = job.get("science_spws")
        if expected is not None and sorted(expected) != science:
            raise RestoreError("%s: science spws %s, but its ASDM's tables said %s, and the split's spw ids were "
                               "decided on those for every EB of the MOUS" % (vis, science, sorted(expected)))
        spws = job.get("split_spws") or ",".join(str(s) for s in science)
        if not spws:
            raise RestoreError("%s has no science spw (OBSERVE_TARGET, more than 4 channels) to split" % vis)
        outvis = os.path.join(work, eb + ".ms.split.cal")
        reindex = bool(job.get("reindex", False))
        mstransform(vis=vis, outputvis=outvis, spw=spws, datacolumn="corrected", reindex=reindex)
        if not os.path.isdir(outvis):
            raise RestoreError("mstransform did not write %s" % outvis)
        out.update(split=outvis, split_spws=spws, reindex=reindex, split_summary=msinfo.summary(outvis),
                   spw_rows=spw_rows(vis), split_spw_rows=spw_rows(outvis),
                   asdm_subtables=asdm_subtables(vis), split_asdm_subtables=asdm_subtables(outvis))
        timings["split"] = time.monotonic() - t
    out["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    return out


if __name__ == "__main__":
    casa_boot.run_job(restore, *casa_boot.script_args(),
                      errors=(RestoreError, calapply_parse.CalapplyError, confined.ConfinementError),
                      label="RESTORE FAILED")
