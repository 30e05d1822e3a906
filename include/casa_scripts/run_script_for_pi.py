"""Run the delivery's scriptForPI.py the way the seed says, unattended, and judge it.

Started in script/ as `casa --pipeline -c run_script_for_pi.py` (or
`python -m casashell --pipeline -c ...`), so this file runs at the top level
of CASA's shell namespace. A real scriptForPI reads its options with
`"DOSPLIT" in globals()` and checks `dir()` for h_init, so it must run in that
same namespace: an `exec` at this file's top level with `globals()` (as
`execfile(f, globals())` does). A plain execfile, or setting the variables in
a `-c` string, and they are silently ignored.

The options come as JSON in ALMA_REGEN_SCRIPT_FOR_PI_GLOBALS; only those
given are set (scriptForPI tests for their presence: a USEMS that is merely
defined changes what it does).

A pipeline run is judged by its own results, not by the tracebacks its
weblog prints (plotms without a display) nor by its exit code (a scriptForPI
that finds no PPR ends "Done" with an empty calibrated/). After the script,
this file loads the pipeline context that h_save wrote in
../calibrated/working/, reads every task's result, describes the measurement
sets in ../calibrated/ and writes all that as JSON to ALMA_REGEN_RESULT for
alma_regen.scriptforpi to judge. It exits 1 when the script itself stopped
on an error. The delivery's script is executed here by design: it is what
scriptForPI is. This file must not import airflow or alma_regen.
"""
import json as _alma_regen_json
import os as _alma_regen_os

_alma_regen = {
    "script": _alma_regen_os.environ["ALMA_REGEN_SCRIPT_FOR_PI"],
    "result": _alma_regen_os.environ["ALMA_REGEN_RESULT"],
    "home": _alma_regen_os.getcwd(),
    "globals": _alma_regen_json.loads(_alma_regen_os.environ.get("ALMA_REGEN_SCRIPT_FOR_PI_GLOBALS", "{}")),
    "error": None,
}
globals().update(_alma_regen["globals"])
print("alma-regen: running %s with %s" % (_alma_regen["script"], _alma_regen["globals"]), flush=True)
try:
    with open(_alma_regen["script"]) as _alma_regen_f:
        _alma_regen_code = compile(_alma_regen_f.read(), _alma_regen["script"], "exec")
    exec(_alma_regen_code, globals())
except SystemExit as _alma_regen_exc:
    # scriptForPI stops with sys.exit('ERROR: ...') on every problem it detects.
    if _alma_regen_exc.code not in (None, 0):
        _alma_regen["error"] = "stopped: %s" % (_alma_regen_exc.code,)
except Exception:
    import traceback as _alma_regen_tb
    _alma_regen["error"] = _alma_regen_tb.format_exc()
    _alma_regen_tb.print_exc()


def _alma_regen_task_results(working):
    """Every pipeline task's outcome, from the newest context h_save left in working/."""
    import glob
    import os
    import pickle
    contexts = sorted(glob.glob(os.path.join(working, "*.context")), key=os.path.getmtime)
    if not contexts:
        return None, []
    here = os.getcwd()
    os.chdir(working)  # results are stored relative to the context's output_dir
    try:
        with open(contexts[-1], "rb") as f:
            context = pickle.load(f)
        return os.path.basename(contexts[-1]), [_alma_regen_task(r) for r in context.results]
    finally:
        os.chdir(here)


def _alma_regen_task(proxy):
    try:
        result = proxy.read() if hasattr(proxy, "read") else proxy
    except Exception as exc:  # a result pickle that cannot be read is a failure to report
        return {"task": None, "stage": None, "failed": True, "error": "unreadable result: %r" % (exc,)}
    tracebacks = _alma_regen_tracebacks(result)
    name = getattr(result, "taskname", None) or type(result).__name__
    return {"task": name, "stage": getattr(result, "stage_number", None), "failed": bool(tracebacks),
            "error": _alma_regen_gist(tracebacks[-1]) if tracebacks else None}


def _alma_regen_gist(text):
    """The last line of a traceback that says something: a pipeline task's wrapped exception
    (`PipelineException(... traceback ...)`) ends in a line holding only ')'. (alma_regen.scriptforpi
    reads the script's own error by the same rule.)"""
    lines = [ln.strip() for ln in text.strip().splitlines() if any(c.isalnum() for c in ln)]
    return lines[-1] if lines else text.strip()


def _alma_regen_tracebacks(result):
    # A task's result may be a list of per-MS results; a failed one carries `tb`.
    if isinstance(result, (list, tuple)) or (hasattr(result, "__iter__") and not isinstance(result, (str, dict))):
        found = []
        for r in result:
            found.extend(_alma_regen_tracebacks(r))
        return found
    tb = getattr(result, "tb", None)
    return [tb] if tb else []


def _alma_regen_describe_ms(path):
    """What is in one measurement set: columns, spw rows and ids, fields."""
    from casatools import msmetadata, table
    tb, md = table(), msmetadata()
    try:
        tb.open(path)
        columns, rows = tb.colnames(), tb.nrows()
        ddids = {int(d) for d in tb.getcol("DATA_DESC_ID")} if rows else set()
        tb.close()
        tb.open(path + "/SPECTRAL_WINDOW")
        spw_rows = tb.nrows()
        tb.close()
        tb.open(path + "/DATA_DESCRIPTION")
        spw_of_dd = tb.getcol("SPECTRAL_WINDOW_ID")
        tb.close()
        md.open(path)
        info = {"columns": columns, "rows": rows, "spw_rows": spw_rows,
                "data_spws": sorted({int(spw_of_dd[d]) for d in ddids}),
                "fields": list(md.fieldnames()),
                "target_fields": sorted(md.fieldsforintent("OBSERVE_TARGET*", True))}
        md.close()
        return info
    except Exception as exc:
        return {"error": repr(exc)}


def _alma_regen_describe(calibrated):
    """calibrated/ as the script left it: entries, links, and each MS's contents."""
    import os
    entries = {}
    if not os.path.isdir(calibrated):
        return None
    for name in sorted(os.listdir(calibrated)):
        path = os.path.join(calibrated, name)
        entry = {"link": os.readlink(path) if os.path.islink(path) else None, "dir": os.path.isdir(path)}
        if (name.endswith(".ms") or name.endswith(".ms.split.cal")) and os.path.isdir(path):
            entry["ms"] = _alma_regen_describe_ms(path)
        entries[name] = entry
    working = os.path.join(calibrated, "working")
    work_ms = {}
    if os.path.isdir(working):
        for name in sorted(os.listdir(working)):
            if name.endswith(".ms") and os.path.isdir(os.path.join(working, name)):
                work_ms[name] = _alma_regen_describe_ms(os.path.join(working, name))
    return {"entries": entries, "working_ms": work_ms}


def _alma_regen_judge(state):
    import json
    import os
    calibrated = os.path.normpath(os.path.join(state["home"], "..", "calibrated"))
    context, tasks = _alma_regen_task_results(os.path.join(calibrated, "working"))
    report = {"schema": "alma-regen/scriptforpi-result/1", "script": state["script"],
              "globals": state["globals"], "error": state["error"], "context": context,
              "tasks": tasks, "calibrated": _alma_regen_describe(calibrated)}
    with open(state["result"] + ".tmp", "w") as f:
        json.dump(report, f, indent=1)
    os.replace(state["result"] + ".tmp", state["result"])
    return report


_alma_regen_os.chdir(_alma_regen["home"])
_alma_regen_report = _alma_regen_judge(_alma_regen)
print("alma-regen: %d pipeline task(s), %d failed; script error: %s" % (
    len(_alma_regen_report["tasks"]), sum(t["failed"] for t in _alma_regen_report["tasks"]),
    _alma_regen_gist(_alma_regen["error"] or "none")), flush=True)
if _alma_regen["error"]:
    import sys as _alma_regen_sys
    _alma_regen_sys.exit(1)
