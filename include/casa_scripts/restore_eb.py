"""Native restore of one execution block, as hifa_restoredata does it (CASA's Python).

Usage: python restore_eb.py JOB.json RESULT.json

JOB: {"eb", "asdm", "workdir", "calapply", "flagversions", "caltables",
      "split": bool, "split_spws": "0,1" or null (science spws chosen here)}

importasdm (the pipeline's options) -> drop the default flag backup, unpack
<EB>.ms.flagversions.tgz and restore `Pipeline_Final` -> unpack the session's
caltables for this EB -> replay calapply.txt (parsed as data, never executed)
-> CORRECTED_DATA holds the calibrated data; optionally split the science spws
into <EB>.ms.split.cal as scriptForPI does. The worker-side code
(alma_regen.calibration) prepares the folders and judges the result.
This file must not import airflow or alma_regen.
"""
import os
import shutil
import sys
import tarfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import casa_boot  # noqa: E402

from casatasks import applycal, flagmanager, importasdm, split  # noqa: E402

import almaopts  # noqa: E402
import calapply_parse  # noqa: E402
import msinfo  # noqa: E402

casa_boot.casa_log_to_console()


class RestoreError(RuntimeError):
    pass


def safe_extract(tgz, dest, prefix):
    """Extract only members under `prefix`, refusing anything that could escape."""
    with tarfile.open(tgz) as tf:
        members = []
        for m in tf.getmembers():
            name = m.name.lstrip("./")
            if not name.startswith(prefix):
                continue
            if m.issym() or m.islnk() or not (m.isfile() or m.isdir()):
                raise RestoreError("%s: member %s is not a plain file or folder" % (tgz, m.name))
            members.append(m)
        if not members:
            raise RestoreError("%s holds nothing for %s" % (tgz, prefix))
        # The 'data' filter refuses absolute paths, '..', devices and setuid bits.
        tf.extractall(dest, members=members, filter="data")
    return len(members)


def restore(job):
    eb, work = job["eb"], job["workdir"]
    vis = os.path.join(work, eb + ".ms")
    timings = {}
    t = time.monotonic()
    # A clean state: an earlier, interrupted attempt leaves nothing usable.
    for p in (vis, vis + ".flagversions", os.path.join(work, eb + ".ms.split.cal")):
        shutil.rmtree(p, ignore_errors=True)
    importasdm(asdm=job["asdm"], vis=vis, **almaopts.IMPORTASDM_OPTIONS)
    timings["importasdm"] = time.monotonic() - t

    t = time.monotonic()
    shutil.rmtree(vis + ".flagversions", ignore_errors=True)
    safe_extract(job["flagversions"], work, eb + ".ms.flagversions")
    flagmanager(vis=vis, mode="restore", versionname=almaopts.FINAL_FLAGS)
    timings["flags"] = time.monotonic() - t

    t = time.monotonic()
    safe_extract(job["caltables"], work, eb + ".ms.")
    calls = calapply_parse.parse_calapply(job["calapply"], work, eb)
    for kwargs in calls:
        applycal(**kwargs)
    timings["applycal"] = time.monotonic() - t

    science = msinfo.science_spws(vis)
    out = {"eb": eb, "vis": vis, "applycal_calls": len(calls), "science_spws": science,
           "summary": msinfo.summary(vis)}
    if job.get("split"):
        t = time.monotonic()
        spws = job.get("split_spws") or ",".join(str(s) for s in science)
        if not spws:
            raise RestoreError("%s has no science spw (OBSERVE_TARGET, more than 4 channels) to split" % vis)
        outvis = os.path.join(work, eb + ".ms.split.cal")
        split(vis=vis, outputvis=outvis, datacolumn="corrected", spw=spws,
              intent="*OBSERVE_TARGET*", keepflags=True)
        out["split"] = outvis
        out["split_spws"] = spws
        out["split_summary"] = msinfo.summary(outvis)
        timings["split"] = time.monotonic() - t
    out["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    return out


if __name__ == "__main__":
    casa_boot.run_job(restore, *casa_boot.script_args(), errors=(RestoreError, calapply_parse.CalapplyError),
                      label="RESTORE FAILED")
