"""Every setting of alma-regen that is not a secret, in one typed object.

Where a value comes from:
  - the environment, `ALMA_REGEN_<FIELD>` (upper case): always;
  - then the Airflow Variable `alma_regen` (a JSON object with the same field
    names), in the processes that may read it: tasks (`runtime_settings`, through
    the Task SDK) and the scheduler/api-server (`with_variable`, given the text
    the ORM read; alma_regen.airflow.deadlines and ui_app).

When it is read:
  - PARSE_TIME fields shape the DAGs themselves (the workdir and products
    location in the tasks' arguments, connections, schedules, pools, queues,
    retries): they are read from the environment
    when a DAG file is parsed (parsing must stay fast and must not touch the
    metadata database), so the Variable cannot change them (with_variable
    leaves them out, with a warning); a deployment sets them in the
    environment of every Airflow process.
  - Every other field is read when it is used, by the task or server that uses
    it, so an override in the Variable reaches all of them alike. A task reads
    the Variable once per try (`runtime_settings` keeps it for the rest of the try:
    each read is a round trip to the api-server); a change reaches the tasks that
    start after it, and the next try of a running one.

Secrets live in Airflow Connections (`alma_request_handler`, `alma_archive_s3`,
`alma_products_s3`); the command line takes them from the environment
(AWS_*, ALMA_REQUEST_HANDLER_COOKIE), never from here.
"""
import json
import logging
import os
from dataclasses import asdict, dataclass, fields

from .errors import PermanentError

VARIABLE = "alma_regen"
WORKSPACE_KEEP = ("all", "raw", "nothing")  # what a published MOUS keeps of its member folder


# Settings renamed: the old name is still read (environment and Variable), as the new one.
RENAMED = {"bulk_max_runs": "bulk_max_in_flight"}


# Read when a DAG file is parsed (see the module's docstring). The Variable does not
# change them anywhere (with_variable leaves them out), so every process agrees on them.
PARSE_TIME = frozenset({
    "workdir", "products_url",  # baked into the tasks' arguments
    "request_handler_conn", "archive_s3_conn", "products_s3_conn",  # the operators' connections
    "casa_pool", "casa_queue", "staging_pool", "retries", "retry_delay_s", "max_retry_delay_s",
    "bulk_schedule", "bulk_worklist",  # the feeder's schedule, and the worklist param's default
})


class InvalidSetting(PermanentError, ValueError):
    """A setting with a value it cannot have (one line)."""


@dataclass(frozen=True)
class Settings:
    workdir: str = "/opt/alma/work"            # member folders live here (shared by the workers)
    products_url: str = ""                     # s3://bucket/prefix to publish to; empty: no publishing
    request_handler_conn: str = "alma_request_handler"
    archive_s3_conn: str = "alma_archive_s3"
    products_s3_conn: str = "alma_products_s3"
    casa_pool: str = "casa"                    # CASA tasks: slots = CASA processes at once
    casa_queue: str = "casa"                   # Celery queue of the workers that have CASA
    staging_pool: str = "alma_staging"         # downloads at once (disk and network)
    retries: int = 3
    retry_delay_s: int = 60
    max_retry_delay_s: int = 1800
    # Time limits (alma_regen/timeouts.py): a step may take max(min_timeout_s, GB x s-per-GB);
    # the CASA runner kills at that limit, the Airflow task a little later (operators/timeouts.py).
    stage_timeout_s_per_gb: int = 600          # staging: GB the archive lists for the step's files
    casa_timeout_s_per_gb: int = 3600          # CASA steps: GB of the member's raw ASDMs (raw/)
    min_timeout_s: int = 1800                  # the floor of both
    stage_min_rate_bps: float = 10000.0        # staging gives up on a source sending less than this over
    stage_min_rate_window_s: float = 120.0     # this window (a transient error; a rerun resumes); 0: never
    # The deadline's allowance is computed when a run is created (airflow/deadlines.py), from
    # the environment and the Variable; only "no alert at all" (negative) is read at parse time.
    deadline_minutes: int = 0                  # 0: the default; negative: no deadline alert
    deadline_seconds: int = 0                  # > 0: the allowance exactly (wins over minutes; tests, tight SLAs)
    deadline_minutes_per_gb: int = 30
    deadline_base_minutes: int = 60
    notify_webhook: str = ""                   # generic JSON webhook for alerts
    notify_email: str = ""                     # comma-separated addresses (SMTP connection smtp_default)
    notify_slack_conn: str = ""                # a Slack webhook connection id
    # The bulk DAG is a feeder: every pass starts what fits now, so a frequent schedule keeps
    # the workers busy until the worklist is done (max_active_runs=1: passes never overlap).
    bulk_schedule: str = "*/15 * * * *"        # cron of alma_bulk_reprocess
    bulk_worklist: str = ""                    # file path or s3://bucket/key
    bulk_max_in_flight: int = 4                # alma_regenerate runs in flight at most (the ledger's; was bulk_max_runs)
    bulk_disk_budget_gb: float = 0.0           # disk all runs may reserve; 0: free + what runs use - bulk_min_free_gb
    bulk_min_free_gb: float = 50.0             # kept free in workdir when the budget is derived from the disk
    # Predicted peak disk of a run = this x the raw ASDM bytes the archive lists, + the other
    # files once. 11 is scriptForPI's own check with SPACESAVING=0 (admission.footprint): a
    # default to tune from measured runs (the native engine needs less), not a measurement.
    footprint_factor: float = 11.0
    # A MOUS whose runs failed this many times in a row is parked: the feeder reports it and
    # starts it again only when forced (attempts.py); 0: never parked.
    bulk_max_attempts: int = 3
    bulk_listing_ttl_h: float = 24.0           # the feeder keeps each MOUS's archive listing this long (0: never)
    sandbox: str = "bwrap"                     # CASA children: bwrap | bwrap-strict | none (casa/sandbox.py; env only)
    sandbox_ro_paths: str = ""                 # extra read-only paths in the sandbox, ':'-separated
    workspace_keep: str = "all"                # after a verified publish: all | raw | nothing (workspace.py)
    # With keep=raw the cleaned member folders are a cache of the archive's files for reruns;
    # above this size the least recently used go whole (workspace.evict). 0: no limit.
    raw_cache_gb: float = 0.0
    s3_endpoint: str = ""                      # S3 endpoint of the command line's client (a mirror, SeaweedFS);
                                               # empty: AWS_ENDPOINT_URL, else AWS. Airflow: the connections'
    casa_registry: str = ""                    # the CASA registry: a file, or its JSON inline (casa/registry.py);
                                               # empty: <workdir>/casa-registry.json
    include: str = ""                          # include/ (CASA site config, our CASA scripts); empty: beside plugins/
    fidelity_tolerances: str = ""              # JSON object overriding fidelity.py's tolerances

    def __post_init__(self):
        if self.workspace_keep not in WORKSPACE_KEEP:
            raise InvalidSetting(f"setting workspace_keep must be one of {', '.join(WORKSPACE_KEEP)}, "
                                 f"not {self.workspace_keep!r}")

    @classmethod
    def from_env(cls, env=None) -> "Settings":
        env = os.environ if env is None else env
        values = {}
        for old, new in RENAMED.items():
            raw = env.get(f"ALMA_REGEN_{old.upper()}")
            if raw is not None and env.get(f"ALMA_REGEN_{new.upper()}") is None:
                values[new] = _cast(next(f for f in fields(cls) if f.name == new), raw)
        for f in fields(cls):
            raw = env.get(f"ALMA_REGEN_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _cast(f, raw)
        return cls(**values)

    def with_overrides(self, overrides: dict) -> "Settings":
        known = {f.name: f for f in fields(self)}
        overrides = dict(overrides)
        for old, new in RENAMED.items():
            if old in overrides:
                overrides.setdefault(new, overrides.pop(old))  # the new name given too: it wins
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ValueError(f"unknown alma_regen settings: {', '.join(unknown)}")
        return Settings(**{**asdict(self), **{k: _cast(known[k], v) for k, v in overrides.items()}})


def _cast(f, raw):
    if f.type in ("int", int):
        return int(raw)
    if f.type in ("float", float):
        return float(raw)
    return str(raw)


def settings() -> Settings:
    """Parse time: the environment only."""
    return Settings.from_env()


def with_variable(raw) -> Settings:
    """The environment, then the `alma_regen` Variable's JSON text `raw` (None or empty: not set).
    PARSE_TIME settings in the Variable are left out, with a warning: the DAGs were built
    with the environment's, and a task must not work elsewhere than its DAG says."""
    base = Settings.from_env()
    overrides = json.loads(raw) if raw else {}
    ignored = sorted(k for k in overrides if RENAMED.get(k, k) in PARSE_TIME)
    if ignored:
        logging.getLogger(__name__).warning(
            "the %s Variable cannot change %s: read when the DAG files are parsed; set them in the "
            "environment of every Airflow process", VARIABLE, ", ".join(ignored))
    overrides = {k: v for k, v in overrides.items() if k not in ignored}
    return base.with_overrides(overrides) if overrides else base


# The settings of the task try this process runs: (the try's identity, Settings). A task try
# has a process of its own under the Task SDK; `airflow dags test` runs every task in one
# process, so the try's identity (not the process) is the key.
_TRY_SETTINGS: tuple = (None, None)


def _task_try():
    """(dag_id, run_id, task_id, map_index, try_number) of the task running in this process, or
    None outside a task (the command line, a server, a test calling an operator by hand)."""
    try:
        from airflow.sdk import get_current_context
        ti = get_current_context().get("ti")
    except (ImportError, RuntimeError):  # no Airflow here, or no task running
        return None
    key = tuple(getattr(ti, k, None) for k in ("dag_id", "run_id", "task_id", "map_index", "try_number"))
    return key if key[0] is not None and key[1] is not None else None


def runtime_settings() -> Settings:
    """Inside a task: the environment, then the `alma_regen` Variable if set; read once per task
    try (the Variable is a round trip to the api-server each time it is read), then kept for the
    rest of the try. Outside a task: the environment (no Variable to read), at every call."""
    global _TRY_SETTINGS
    key = _task_try()
    if key is not None and _TRY_SETTINGS[0] == key:
        return _TRY_SETTINGS[1]
    try:
        from airflow.sdk import Variable
        raw = Variable.get(VARIABLE, default=None)
    except Exception:  # no Airflow context (CLI): the environment is all there is
        raw = None
    s = with_variable(raw)
    if key is not None:
        _TRY_SETTINGS = (key, s)
    return s
