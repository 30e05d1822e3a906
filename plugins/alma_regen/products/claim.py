"""One publisher per run id, decided by the object store itself.

Before the first upload of `prefix/<MOUS>/<run>/`, a publisher writes the claim
`<run>/.publishing.json` with a conditional PUT (`If-None-Match: *`): the store
accepts exactly one of two concurrent writers (S3 since 2024, SeaweedFS; the
test suite checks SeaweedFS with two real processes). The loser is told who
publishes that run and stops before writing anything. The winner looks for the
manifest again after claiming (a publisher that finished just before has
released its claim and left its manifest), uploads, writes the manifest, and
deletes the claim: a published run is then guarded by its manifest.

A claim left by a publisher that died is resumed by the same owner (a retry of
the same DAG run: the operator's owner is the run, not the process) and taken
over, conditionally on its ETag (`If-Match`), when its process is gone (same
host) or it is older than 7 days; otherwise it is an error that names it. A
store that does not implement conditional writes (501) gets a plain write read
back: the last writer sees its own claim, an earlier one does not.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from datetime import datetime, timezone

from ..errors import PermanentError, TransientError
from ..s3 import classify as _classify, is_missing

log = logging.getLogger(__name__)

CLAIM = ".publishing.json"
MAX_AGE_S = 7 * 86400


class PublishBusy(TransientError):
    """Another publisher is writing this run id now."""


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Claim:
    def __init__(self, client, bucket: str, key: str, etag: str | None):
        self.client, self.bucket, self.key, self.etag = client, bucket, key, etag

    def release(self) -> None:
        """Best effort: a claim that stays is resumed by its owner or taken over when stale."""
        try:
            current = _get(self.client, self.bucket, self.key)
            if current is not None and current[1] == self.etag:
                self.client.delete_object(Bucket=self.bucket, Key=self.key)
        except Exception as exc:  # noqa: BLE001 - the run is published (or failed) either way
            log.warning("could not remove the publishing claim s3://%s/%s: %s", self.bucket, self.key, exc)


def claim_run(client, bucket: str, base: str, owner: str, location: str, manifest_exists) -> Claim:
    """Take run `base` for `owner`, or raise PublishBusy (another live publisher) /
    PermanentError (published meanwhile). `manifest_exists()` is looked at after claiming."""
    key = base + CLAIM
    mine = {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    body = json.dumps(mine).encode()
    claim = None
    for _ in range(5):
        status, etag = _put(client, bucket, key, body, IfNoneMatch="*")
        if status == "ok":
            claim = Claim(client, bucket, key, etag)
            break
        if status == "unsupported":
            claim = _unconditional(client, bucket, key, body, owner, location)
            break
        current = _get(client, bucket, key)        # held: by whom?
        if current is None:
            continue                               # released meanwhile: try again
        holder, held_etag = current
        why = "it is ours" if holder.get("owner") == owner else _stale(holder)
        if why is None:
            raise PublishBusy(f"{location} is being published by {holder.get('owner', '?')} since "
                              f"{_when(holder.get('since'))}: one run id has one publisher; wait for it to "
                              "finish, or publish under a new run id")
        status, etag = _put(client, bucket, key, body, IfMatch=held_etag)
        if status == "ok":
            log.info("%s: taking over the publishing claim of %s (%s)", location, holder.get("owner"), why)
            claim = Claim(client, bucket, key, etag)
            break
        # someone else took it over (or released it) first: look again
    if claim is None:
        raise PublishBusy(f"{location}: the publishing claim kept changing hands; try again later")
    if manifest_exists():
        claim.release()
        raise PermanentError(f"{location} is already published (its manifest.json exists); a rerun never "
                             "overwrites a published run: publish under a new run id")
    return claim


def _put(client, bucket, key, body, **cond):
    """('ok', etag) | ('precondition', None) | ('unsupported', None)."""
    from botocore.exceptions import ClientError
    try:
        r = client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", **cond)
        return "ok", r.get("ETag")
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 412 or code == "PreconditionFailed":
            return "precondition", None
        if status == 409 or code == "ConditionalRequestConflict":   # S3: a concurrent conditional write
            return "precondition", None
        if status == 501 or code == "NotImplemented":
            return "unsupported", None
        raise _classify(exc, f"PUT s3://{bucket}/{key}") from None
    except Exception as exc:  # noqa: BLE001 - network faults: TransientError
        raise _classify(exc, f"PUT s3://{bucket}/{key}") from None


def _get(client, bucket, key):
    """(claim, etag), or None when there is no claim; an unreadable claim reads as {}."""
    from botocore.exceptions import ClientError
    try:
        r = client.get_object(Bucket=bucket, Key=key)
        raw = r["Body"].read()
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if is_missing(exc):
            return None
        if isinstance(status, int) and status >= 500:
            # The claim's bytes are unreadable (a store killed mid-write loses them: SeaweedFS
            # after kill -9) while the object is listed: an unreadable claim, taken over by ETag.
            try:
                return {}, client.head_object(Bucket=bucket, Key=key).get("ETag")
            except Exception:  # noqa: BLE001
                pass
        raise _classify(exc, f"GET s3://{bucket}/{key}") from None
    except Exception as exc:  # noqa: BLE001
        raise _classify(exc, f"GET s3://{bucket}/{key}") from None
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = {}
    return (doc if isinstance(doc, dict) else {}), r.get("ETag")


def _unconditional(client, bucket, key, body, owner, location) -> Claim:
    log.warning("s3://%s: the store has no conditional writes: the publishing claim is written and read back",
                bucket)
    current = _get(client, bucket, key)
    if current is not None and current[0].get("owner") != owner and _stale(current[0]) is None:
        raise PublishBusy(f"{location} is being published by {current[0].get('owner', '?')}; "
                          "publish under a new run id")
    client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    time.sleep(1.0)  # let a concurrent writer land before reading back
    current = _get(client, bucket, key)
    if current is None or current[0].get("owner") != owner:
        raise PublishBusy(f"{location} is being published by another publisher; publish under a new run id")
    return Claim(client, bucket, key, current[1])


def _stale(holder: dict):
    """Why a claim no longer belongs to a live publisher, or None."""
    if not holder:
        return "the claim is unreadable"
    since = holder.get("since")
    if isinstance(since, (int, float)) and time.time() - since > MAX_AGE_S:
        return "claimed more than 7 days ago"
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and isinstance(pid, int) \
            and holder.get("owner") == f"{holder.get('host')}:{pid}":
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"its process {pid} has ended"
        except PermissionError:
            return None
    return None


def _when(since) -> str:
    if not isinstance(since, (int, float)):
        return "an unknown time"
    return datetime.fromtimestamp(since, timezone.utc).isoformat(timespec="seconds")
