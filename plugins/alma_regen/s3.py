"""The S3 vocabulary every part of alma-regen speaks: locations, a client, errors.

    parse_s3_url("s3://bucket/prefix")  -> (bucket, prefix)
    s3_client()                         a boto3 client from the environment (the command
                                        line, tests); the Airflow layer gets its clients
                                        from connections through its hooks
                                        (alma_regen.airflow.hooks), never here
    classify(exc, what)                 a boto3 or network error as one of ours: transient
                                        (5xx, throttling, a dropped connection) or permanent
    is_missing(exc)                     the object or bucket is not there (404 in its forms)

    key(prefix, mous_f, run, path)      the key layout of published runs:
                                        prefix/<MOUS in file form>/<run>/<path>, empty parts left out
    latest_key(prefix, mous_uid)        prefix/<MOUS>/latest.json, which names the MOUS's latest run

The staging side maps errors to its own finer kinds (staging/sources.py).
No Airflow here.
"""
import os
import re
import socket

from .errors import AlmaRegenError, PermanentError, TransientError

ENDPOINT_ENV = "ALMA_REGEN_S3_ENDPOINT"
WORKERS = 8
MISSING_CODES = ("NoSuchKey", "NoSuchBucket", "404", "NotFound")


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


def s3_client(*, workers: int = WORKERS):
    """A boto3 S3 client from the environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    ALMA_REGEN_S3_ENDPOINT or AWS_ENDPOINT_URL (path-style addressing then), AWS_DEFAULT_REGION."""
    import boto3
    from botocore.config import Config
    endpoint = os.environ.get(ENDPOINT_ENV) or os.environ.get("AWS_ENDPOINT_URL") or None
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        config=Config(s3={"addressing_style": "path"} if endpoint else {}, max_pool_connections=workers + 4,
                      retries={"mode": "standard", "max_attempts": 3}, connect_timeout=10, read_timeout=120))


def is_missing(exc) -> bool:
    """True when a boto3 error says the object (or its bucket) does not exist."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status == 404 or str(response.get("Error", {}).get("Code", "")) in MISSING_CODES


def classify(exc, what: str) -> AlmaRegenError:
    """A boto3/network error as one of ours: 5xx, throttling, a dropped connection are transient."""
    from botocore.exceptions import BotoCoreError, ClientError
    if isinstance(exc, AlmaRegenError):
        return exc
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        msg = f"{what}: S3 said {code or status}: {exc.response.get('Error', {}).get('Message', '')}".rstrip(": ")
        if status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"):
            return TransientError(msg)
        return PermanentError(msg)
    if isinstance(exc, (BotoCoreError, OSError, socket.error)):
        return TransientError(f"{what}: the S3 endpoint is unreachable or dropped the connection ({exc})")
    return PermanentError(f"{what}: {exc}")
