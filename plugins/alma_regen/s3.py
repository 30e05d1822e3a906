"""The S3 vocabulary every part of alma-regen speaks: locations, a client, errors.

    parse_s3_url("s3://bucket/prefix")  -> (bucket, prefix)
    s3_client()                         a boto3 client from the environment and the settings
                                        (the command line, tests); the Airflow layer gets its
                                        clients from connections through its hooks
                                        (alma_regen.airflow.hooks), which build them with
    make_client(...)                    the one place a boto3 S3 client is configured
    kind(exc)                           what a boto3 or network error means: missing, changed,
                                        denied, transient or permanent (the one table of codes)
    classify(exc, what)                 that as one of our errors: transient or permanent
                                        (staging maps the same kinds to finer classes)
    is_missing(exc)                     the object or bucket is not there (404 in its forms)
    run_folder(run_id)                  an Airflow run id as the <run> part of the key layout

    key(prefix, mous_f, run, path)      the key layout of published runs:
                                        prefix/<MOUS in file form>/<run>/<path>, empty parts left out
    latest_key(prefix, mous_uid)        prefix/<MOUS>/latest.json, which names the MOUS's latest run

The staging side maps errors to its own finer kinds (staging/sources.py).
No Airflow here.
"""
import os
import re
import socket
import threading

from .errors import AlmaRegenError, PermanentError, TransientError

ENDPOINT_ENV = "ALMA_REGEN_S3_ENDPOINT"  # the setting s3_endpoint (config.py)
WORKERS = 8
MISSING_CODES = ("NoSuchKey", "NoSuchBucket", "404", "NotFound")
CHANGED_CODES = ("PreconditionFailed", "InvalidRange")
DENIED_CODES = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")
TRANSIENT_CODES = ("SlowDown", "Throttling", "RequestTimeout", "InternalError", "ServiceUnavailable")


def key(*parts: str) -> str:
    """The parts joined with "/", empty ones left out (an empty prefix is the bucket's root)."""
    return "/".join(p for p in parts if p)


def latest_key(prefix: str, mous_uid: str) -> str:
    from .naming import uid_to_file
    return key(prefix, uid_to_file(mous_uid), "latest.json")


def parse_s3_url(url: str):
    """`s3://bucket/prefix` -> (bucket, prefix without slashes at the ends)."""
    m = re.match(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$", url or "")
    if not m:
        raise PermanentError(f"not an S3 location: {url!r} (expected s3://bucket/prefix)")
    return m.group(1), (m.group(2) or "").strip("/")


def run_folder(run_id) -> str:
    """An Airflow run id as the <run> part of published keys (and of the UI's links to them):
    letters, digits and ._- kept, the rest "_" (a run id holds ":" and "+")."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(run_id or "")).strip("_.-")


_SESSION: list = []  # the process's one botocore session (as boto3.client() keeps one): models load once
_SESSION_LOCK = threading.Lock()


def make_client(*, endpoint: str | None = None, region: str | None = None, key_id: str | None = None,
                secret: str | None = None, pool: int = WORKERS + 4, connect_timeout: float = 10,
                read_timeout: float = 120, attempts: int = 3):
    """A boto3 S3 client; an explicit endpoint (a mirror, SeaweedFS) gets path-style addressing.
    Credentials None: boto3's own chain (environment, profile, role).

    Made by botocore, which is what boto3.client() does underneath, without importing boto3
    itself (its transfer manager and resources): that import was a third of the fixed cost
    of `alma-regen stage` from S3 (bench/staging.py). Nothing here uses boto3's additions
    (upload_file and co.; products/upload.py has its own)."""
    import botocore.session
    from botocore.config import Config
    with _SESSION_LOCK:  # creating clients from one session is not thread-safe
        if not _SESSION:
            _SESSION.append(botocore.session.get_session())
        return _SESSION[0].create_client(
            "s3", endpoint_url=endpoint or None, region_name=region or "us-east-1",
            aws_access_key_id=key_id or None, aws_secret_access_key=secret or None,
            config=Config(s3={"addressing_style": "path"} if endpoint else {}, max_pool_connections=pool,
                          retries={"mode": "standard", "max_attempts": attempts},
                          connect_timeout=connect_timeout, read_timeout=read_timeout))


def s3_client(*, workers: int = WORKERS, settings=None):
    """A boto3 S3 client from the environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    the setting s3_endpoint (ALMA_REGEN_S3_ENDPOINT) or AWS_ENDPOINT_URL, AWS_DEFAULT_REGION."""
    if settings is None:
        from .config import Settings
        settings = Settings.from_env()
    return make_client(endpoint=settings.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL"),
                       region=os.environ.get("AWS_DEFAULT_REGION"), pool=workers + 4)


def kind(exc) -> str:
    """What a boto3/network error means: "missing" (404), "changed" (a precondition or range
    no longer holds), "denied" (401/403), "transient" (5xx, throttling, a dropped connection)
    or "permanent"."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if status == 404 or code in MISSING_CODES:
            return "missing"
        if status in (412, 416) or code in CHANGED_CODES:
            return "changed"
        if status in (401, 403) or code in DENIED_CODES:
            return "denied"
        if status >= 500 or status == 429 or code in TRANSIENT_CODES:
            return "transient"
        return "permanent"
    from botocore.exceptions import BotoCoreError
    if isinstance(exc, (BotoCoreError, OSError, socket.error)):
        return "transient"
    return "permanent"


def describe(exc, what: str) -> str:
    """One line: what failed and what S3 said."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error", {})
        code = err.get("Code", "") or response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
        return f"{what}: S3 said {code}: {err.get('Message', '')}".rstrip(": ")
    if kind(exc) == "transient":
        return f"{what}: the S3 endpoint is unreachable or dropped the connection ({exc})"
    return f"{what}: {exc}"


def is_missing(exc) -> bool:
    """True when a boto3 error says the object (or its bucket) does not exist."""
    return isinstance(getattr(exc, "response", None), dict) and kind(exc) == "missing"


def classify(exc, what: str) -> AlmaRegenError:
    """A boto3/network error as one of ours: 5xx, throttling, a dropped connection are transient."""
    if isinstance(exc, AlmaRegenError):
        return exc
    return (TransientError if kind(exc) == "transient" else PermanentError)(describe(exc, what))
