"""Run an imaging recipe of the real ALMA pipeline on calibrated MSs (inside a pipeline CASA).

Usage: casa --pipeline -c imaging_pipeline.py JOB.json RESULT.json     (cwd: the pipeline's working folder)

JOB: {"vis": [MS names in cwd], "mous": "uid://A001/X../X..", "weblog": bool,
      "recipe": [[task, {param: value}], ...]}
The recipe's tasks are called one by one through the pipeline's own CLI (the
calls a casa_pipescript makes), after h_init with the MOUS set as the
project's OUS status id: the pipeline names its images and exported FITS
after it, as in a delivery. A pipeline task that fails raises (its results
carry tracebacks); the run stops there. RESULT lists every stage the context
holds (stage number, task, seconds, ok) and the failed task's error: the run
is judged by these task results, not by what the weblog prints.
This file must not import airflow or alma_regen.
"""
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import casa_boot  # noqa: E402  (offline guard; the job and result files)

import pipeline  # noqa: E402
import pipeline.h.cli as h_cli  # noqa: E402
import pipeline.hif.cli as hif_cli  # noqa: E402
import pipeline.hifa.cli as hifa_cli  # noqa: E402
from pipeline.infrastructure import utils as pl_utils  # noqa: E402

_CLIS = (hifa_cli, hif_cli, h_cli)


def _task(name):
    for cli in _CLIS:
        fn = getattr(cli, name, None)
        if fn is not None:
            return fn
    raise KeyError("the pipeline %s has no task %s" % (pipeline.revision, name))


def _stages(context):
    """What the context holds: one entry per stage, from the task results."""
    out = []
    for proxy in context.results:
        res = proxy.read()
        tbs = pl_utils.get_tracebacks(res)
        out.append({"stage": getattr(res, "stage_number", None), "task": getattr(res, "taskname", None),
                    "ok": not tbs, "tracebacks": [t.splitlines()[-1] for t in tbs]})
    return out


def run(job, result_path):
    # Resolve every task first: a recipe naming a task this release lacks fails before any work.
    steps = [(name, _task(name), params) for name, params in job["recipe"]]
    context = h_cli.h_init(weblog=bool(job.get("weblog", False)))
    context.project_structure.ousstatus_entity_id = job["mous"]
    result = {"pipeline_version": pipeline.revision, "steps": [], "failed": None}
    try:
        for name, fn, params in steps:
            params = dict(params)
            if name == "hifa_importdata":
                params["vis"] = job["vis"]
            t0 = time.time()
            print("alma-regen: pipeline task %s(%s)" % (name, ", ".join("%s=%r" % kv for kv in params.items())),
                  flush=True)
            try:
                fn(**params)
            except Exception as exc:  # a failed pipeline task: record it and stop the recipe
                result["failed"] = {"task": name, "error": "%s: %s" % (type(exc).__name__, str(exc).strip()[-2000:]),
                                    "traceback": traceback.format_exc()[-4000:]}
                break
            finally:
                result["steps"].append({"task": name, "params": params, "seconds": round(time.time() - t0, 1)})
    finally:
        result["stages"] = _stages(context)
        result["context"] = context.name
        h_cli.h_save()
        casa_boot.write_result(result_path, result, default=str)
    if result["failed"]:
        # One clear last line for the runner to quote, then a non-zero exit.
        print("IMAGING PIPELINE FAILED: %s: %s" % (result["failed"]["task"], result["failed"]["error"][-500:]),
              flush=True)
        sys.exit(3)


# casashell runs this file in its shell namespace (no __main__ guard there).
_args = casa_boot.script_args()
run(casa_boot.read_job(_args[0]), _args[1])
