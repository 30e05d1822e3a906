"""The job/result exchange with our scripts of include/casa_scripts/, host side.

Each such script reads its work from a JSON job file and writes what it did to a JSON
result file (include/casa_scripts/casa_boot.py: `run_job`, `read_job`, `write_result`):

    job = CasaJob(folder, "plan")          # folder/plan.job.json -> folder/plan.result.json
    run, result = job.run(runner, launcher, "image_native.py", {"vis": [...]}, mode="plan",
                          timeout=..., label="native imaging plan")

The job is written atomically (alma_regen.jsonstore.write_atomic) and the result of an
earlier run removed first, so a stale result never passes for this run's. A result that is
missing or not JSON after CASA exited 0 is one CasaError naming the log to read. A step
that judges a failed run by its result too (the imaging pipeline) uses the parts:
`write`, `command`, then `result` / `result_path` itself.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import CasaError
from ..jsonstore import write_atomic
from ..paths import casa_script


class CasaJob:
    """`<name>.job.json` in, `<name>.result.json` out, in `folder` (`job.json` / `result.json`
    without a name)."""

    def __init__(self, folder, name: str = ""):
        self.folder = Path(folder)
        self.name = name
        prefix = f"{name}." if name else ""
        self.job_path = self.folder / f"{prefix}job.json"
        self.result_path = self.folder / f"{prefix}result.json"

    def write(self, job: dict) -> Path:
        """The job file, written atomically; any earlier result removed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.result_path.unlink(missing_ok=True)
        write_atomic(self.job_path, job, what="the CASA job")
        return self.job_path

    def args(self, mode: str | None = None, *, relative: bool = False) -> list:
        """The script's arguments: [MODE] JOB.json RESULT.json (names only when `relative`: the
        script then runs in `folder`)."""
        paths = [self.job_path, self.result_path]
        return ([mode] if mode else []) + [p.name if relative else p for p in paths]

    def command(self, launcher, script: str, *, mode: str | None = None, args=None, relative: bool = False,
                pipeline: bool = False, shell: bool = False) -> list:
        """The command that runs include/casa_scripts/`script` on this job under `launcher`
        (its plain Python by default; `shell` for CASA's shell namespace). `args` replaces
        the job and result arguments for a script that takes others."""
        return launcher.command(casa_script(script), self.args(mode, relative=relative) if args is None else args,
                                pipeline=pipeline, shell=shell)

    def result(self, run=None, label: str | None = None) -> dict:
        """The result the script wrote; a CasaError naming the log when it wrote none or not JSON."""
        what = label or self.name or "CASA job"
        try:
            text = self.result_path.read_text()
        except FileNotFoundError:
            raise CasaError(f"CASA ({what}) exited without writing its result {self.result_path}: "
                            f"see {_log_of(run)}") from None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise CasaError(f"CASA ({what}) wrote a result that is not JSON ({self.result_path}: {exc}): "
                            f"see {_log_of(run)}") from None

    def run(self, runner, launcher, script: str, job: dict | None, *, cwd=None, mode: str | None = None,
            args=None, relative: bool = False, timeout=None, label: str | None = None, pipeline: bool = False,
            shell: bool = False, strict: bool = True):
        """Write the job (none for a script given only `args`), run `script` in `cwd` (default: the
        job's folder) and read its result: (CasaRun, result). The runner's errors (an exit status,
        a traceback, a timeout) are raised as it raises them."""
        if job is not None:
            self.write(job)
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.result_path.unlink(missing_ok=True)
        cmd = self.command(launcher, script, mode=mode, args=args, relative=relative, pipeline=pipeline, shell=shell)
        run = runner.run(cmd, cwd=cwd or self.folder, timeout=timeout, label=label, strict=strict)
        return run, self.result(run, label)


def _log_of(run) -> str:
    """The log that says what CASA did: its casa-*.log when it wrote one, else the task's own log."""
    logs = list(getattr(run, "casa_logs", None) or ())
    return logs[-1] if logs else "CASA's output in this task's log"
