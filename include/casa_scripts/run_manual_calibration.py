"""Run a manually calibrated delivery's scripts as scriptForPI runs them (inside the CASA shell).

Usage: casa -c run_manual_calibration.py JOB.json RESULT.json      (cwd: calibrated/)

What scriptForPI (v1.34, v2.5) does for manual data, and so this file:
- `applyonly = True` is set in the namespace before any delivery script runs. Manual
  calibration scripts test it (`if applyonly != True: es = aU.stuffForScienceDataReduction()`,
  `if applyonly != True: aU.plotbandpass(...)`): with it they redo the calibration from
  the raw data without analysisUtils and its plots; without it they need analysisUtils.
  `mysteps` is left unset: every step runs.
- Each EB's script (interferometric ones in chronological order, then the single-dish
  ones) runs in calibrated/<EB>.calibration/, where the host linked the ASDM as `<EB>`
  and the ephemerides `calibration/*.eph`, in the one namespace all the scripts share
  (scriptForPI's `execfile(script, globals())`).
- After each EB: <EB>.ms.split.cal is moved up into calibrated/; then, in that EB's folder,
  SPACESAVING >= 2 removes <EB>.ms and >= 1 removes <EB>.ms.split. An EB whose script made
  no <EB>.ms.split.cal is an error that is reported and the next EB goes on (scriptForPI
  prints ERROR and carries on).
- Then, in calibrated/: scriptForPolCalibration.py, scriptForFluxCalibration.py and
  scriptForImagingPrep.py, in that order; then SPACESAVING >= 3 removes every
  <EB>.ms.split.cal when calibrated.ms exists.
A script that stops (sys.exit with an error, an exception) stops the run there, as it
stops scriptForPI. The delivery's scripts run here by design (inside the sandbox): they are
what scriptForPI runs. RESULT lists every step, what it made and removed, and errors.
This file must not import airflow or alma_regen.
"""
import os
import shutil
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import casa_boot  # noqa: E402  (offline guard; the job and result files)


def _alma_regen_finish_eb(step, rec, home, level):
    """<EB>.ms.split.cal up into calibrated/, then SPACESAVING in the EB's own folder."""
    eb, folder = step["eb"], os.path.join(home, step["cwd"])
    out = os.path.join(folder, eb + ".ms.split.cal")
    if not os.path.isdir(out):
        rec["missing"] = eb + ".ms.split.cal"
        print("ERROR: %s.ms.split.cal was not created." % eb, flush=True)
        return
    target = os.path.join(home, eb + ".ms.split.cal")
    if os.path.lexists(target):
        shutil.rmtree(target)
    shutil.move(out, target)
    rec["made"] = eb + ".ms.split.cal"
    for name, minimum in ((eb + ".ms", 2), (eb + ".ms.split", 1)):
        if level >= minimum and os.path.isdir(os.path.join(folder, name)):
            shutil.rmtree(os.path.join(folder, name))
            rec["removed"].append(os.path.join(step["cwd"], name))


def _alma_regen_run(job, shell_globals):
    home = os.getcwd()
    # The namespace every delivery script shares (scriptForPI's globals()), without this
    # file's own names.
    namespace = {k: v for k, v in shell_globals.items() if not k.startswith("_alma_regen")}
    namespace.update(applyonly=True, __name__="__main__")
    level = int(job["spacesaving"])
    steps, stopped = [], None
    for step in job["steps"]:
        where = os.path.join(home, step["cwd"])
        rec = {"kind": step["kind"], "script": step["script"], "eb": step.get("eb"), "cwd": step["cwd"],
               "applyonly": namespace.get("applyonly"), "error": None, "made": None, "missing": None,
               "removed": []}
        steps.append(rec)
        t0 = time.time()
        os.chdir(where)
        print("alma-regen: running %s in %s (applyonly=%r)" % (step["script"], step["cwd"], rec["applyonly"]),
              flush=True)
        try:
            with open(step["path"]) as f:
                code = compile(f.read(), step["path"], "exec")
            namespace["__file__"] = step["path"]
            exec(code, namespace)
        except SystemExit as exc:
            if exc.code not in (None, 0):
                rec["error"] = "stopped: %s" % (exc.code,)
        except Exception:  # the script's own failure: reported, the run stops here
            rec["error"] = traceback.format_exc().strip().splitlines()[-1]
            traceback.print_exc()
        rec["seconds"] = round(time.time() - t0, 3)
        os.chdir(home)
        if rec["error"]:
            stopped = rec
            break
        if step["kind"] == "eb":
            _alma_regen_finish_eb(step, rec, home, level)
    removed_final = []
    if stopped is None and level >= 3 and os.path.isdir(os.path.join(home, "calibrated.ms")):
        for eb in job["ebs"]:
            p = os.path.join(home, eb + ".ms.split.cal")
            if os.path.isdir(p):
                shutil.rmtree(p)
                removed_final.append(eb + ".ms.split.cal")
    os.chdir(home)
    return {"steps": steps, "stopped": stopped, "removed_at_end": removed_final, "spacesaving": level}


_alma_regen_args = casa_boot.script_args()
if len(_alma_regen_args) != 2:
    print("usage: run_manual_calibration.py JOB.json RESULT.json", flush=True)
    sys.exit(2)
_alma_regen_job = casa_boot.read_job(_alma_regen_args[0])
_alma_regen_result = _alma_regen_run(_alma_regen_job, globals())
casa_boot.write_result(_alma_regen_args[1], _alma_regen_result)
if _alma_regen_result["stopped"] is not None:
    print("MANUAL CALIBRATION STOPPED: %s: %s" % (_alma_regen_result["stopped"]["script"],
                                                 _alma_regen_result["stopped"]["error"]), flush=True)
    sys.exit(3)
