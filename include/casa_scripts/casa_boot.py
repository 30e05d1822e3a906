"""Imported first by every alma-regen script that runs in CASA's Python.

- Makes casaconfig skip the user's ~/.casa/config.py (our site config rules:
  measures from casadata, no auto-update), by the `--noconfig` flag casaconfig
  reads from sys.argv at import time.
- With ALMA_REGEN_OFFLINE=1, installs an audit hook that refuses any socket
  connection or DNS look-up, so a CASA that tried the network fails loudly
  instead of hanging on a time-out.
This file must not import airflow or anything of alma_regen.
"""
import os
import sys

if "--noconfig" not in sys.argv:
    sys.argv.append("--noconfig")


class NetworkRefused(RuntimeError):
    pass


def _refuse_network(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "urllib.Request"):
        # AF_UNIX sockets are local IPC, not network.
        if event == "socket.connect" and getattr(args[0], "family", None) == 1:
            return
        raise NetworkRefused(f"alma-regen: CASA tried the network ({event} {args[1:]!r}); it must run offline")


if os.environ.get("ALMA_REGEN_OFFLINE") == "1":
    sys.addaudithook(_refuse_network)


def casa_log_to_console():
    """Send the whole CASA log (INFO included) to the console, so the runner
    streams it into the task log; plain-Python CASA ignores log2term."""
    from casatasks import casalog
    casalog.showconsole(True)


def read_job(job_path):
    """The job a script was given: the JSON file the host wrote (alma_regen.casa.jobs)."""
    import json
    with open(job_path) as f:
        return json.load(f)


def write_result(result_path, result, **dump_args):
    """The script's result as JSON, whole or not at all (a temporary file, then renamed): the
    host never reads half a result. `dump_args` go to json.dump (default=str, ...)."""
    import json
    tmp = "%s.tmp" % result_path
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, **dump_args)
    os.replace(tmp, result_path)


def run_job(func, job_path, result_path, errors=(), label="FAILED"):
    """The entry point of our CASA-side scripts: JOB.json in, RESULT.json out.

    An expected error (`errors`) prints one clear line for the runner to quote
    and exits 3; anything else keeps its traceback.
    """
    job = read_job(job_path)
    try:
        result = func(job)
    except errors as exc:
        print("%s: %s" % (label, exc), file=sys.stderr)
        sys.exit(3)
    write_result(result_path, result)


def script_args():
    """The script's own arguments (casaconfig's --flags removed)."""
    return [a for a in sys.argv[1:] if not a.startswith("--")]
