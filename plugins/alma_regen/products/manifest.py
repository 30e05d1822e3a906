"""The manifest of a published run, and latest.json, which names a MOUS's latest run.

    prefix/<MOUS>/<run>/manifest.json   written last: the run is published once it exists
    prefix/<MOUS>/latest.json           {"run", "manifest", "manifest_sha256", ...}, moved after it

Every reader of published runs goes through here: the publish step (a run is never
written twice), the reuse check before staging, the workspace's check before cleaning.
No Airflow here.
"""
import json
import re
import uuid
from datetime import datetime, timezone

from .. import naming
from ..errors import PermanentError
from ..s3 import classify as _classify, is_missing, key as s3_key, latest_key, parse_s3_url

SCHEMA = "alma-regen/manifest/1"
_RUN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def check_run(run: str) -> str:
    """`run` if it can be a run folder (letters, digits, '.', '_' or '-', at most 128), else a PermanentError."""
    if not _RUN_RE.match(run):
        raise PermanentError(f"run id {run!r} must be letters, digits, '.', '_' or '-' (at most 128)")
    return run


def read_manifest(client, to: str, mous: str, run: str) -> dict | None:
    """The manifest of a published run, or None (then the run is not published)."""
    from botocore.exceptions import ClientError
    bucket, prefix = parse_s3_url(to)
    mkey = s3_key(prefix, naming.uid_to_file(mous), run, "manifest.json")
    try:
        return json.loads(client.get_object(Bucket=bucket, Key=mkey)["Body"].read())
    except ClientError as exc:
        if is_missing(exc):
            return None
        raise _classify(exc, f"GET s3://{bucket}/{mkey}") from None


class BadLatest(PermanentError):
    """latest.json is there but names no readable run of its own MOUS."""


def latest_manifest(client, products_url: str, mous: str) -> dict | None:
    """The manifest of the run `latest.json` names under `products_url` (`s3://bucket/prefix`),
    or None when there is none. The run is looked up under `products_url` (latest.json's own
    manifest URL is not followed elsewhere), and its manifest must say it is that run."""
    from botocore.exceptions import ClientError
    bucket, prefix = parse_s3_url(products_url)
    key = latest_key(prefix, mous)
    try:
        latest = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as exc:
        if is_missing(exc):
            return None
        raise _classify(exc, f"GET s3://{bucket}/{key}") from None
    except ValueError:
        raise BadLatest(f"s3://{bucket}/{key} is not JSON") from None
    run = latest.get("run") if isinstance(latest, dict) else None
    if not run:
        raise BadLatest(f"s3://{bucket}/{key} names no run")
    manifest = read_manifest(client, products_url, mous, run)
    if manifest is not None and manifest.get("run") != run:
        raise BadLatest(f"s3://{bucket}/{key} names run {run}, its manifest run {manifest.get('run')}")
    return manifest
