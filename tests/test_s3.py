"""The S3 vocabulary (alma_regen.s3): locations, the key layout, run folders, and the one
table of error codes that publishing, reuse, the workspace and staging all read.

The errors are botocore's own ClientError built with the response S3 sends; a real server
answering 503 or 412 on demand is not something SeaweedFS can be made to do.
"""
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from alma_regen import s3
from alma_regen.errors import PermanentError, TransientError
from alma_regen.staging import sources
from alma_regen.staging.errors import AccessDeniedError, NotFoundError, SourceChangedError


def client_error(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "said the server"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def test_locations_and_the_key_layout():
    assert s3.parse_s3_url("s3://products/regen/") == ("products", "regen")
    assert s3.parse_s3_url("s3://products") == ("products", "")
    with pytest.raises(PermanentError, match="not an S3 location"):
        s3.parse_s3_url("https://products/regen")
    assert s3.key("", "uid___A001_X1_X2", "run1", "manifest.json") == "uid___A001_X1_X2/run1/manifest.json"
    assert s3.latest_key("regen", "uid://A001/X1/X2") == "regen/uid___A001_X1_X2/latest.json"


def test_a_run_id_becomes_a_run_folder_the_ui_can_rebuild():
    assert s3.run_folder("manual__2026-11-25T03:00:00+00:00") == "manual__2026-11-25T03_00_00_00_00"
    assert s3.run_folder("scheduled__x.") == "scheduled__x"
    assert s3.run_folder(None) == ""


@pytest.mark.parametrize("status,code,kind,ours,staging", [
    (404, "NoSuchKey", "missing", PermanentError, NotFoundError),
    (200, "NoSuchBucket", "missing", PermanentError, NotFoundError),
    (412, "PreconditionFailed", "changed", PermanentError, SourceChangedError),
    (416, "InvalidRange", "changed", PermanentError, SourceChangedError),
    (403, "AccessDenied", "denied", PermanentError, AccessDeniedError),
    (503, "SlowDown", "transient", TransientError, TransientError),
    (429, "", "transient", TransientError, TransientError),
    (400, "InvalidArgument", "permanent", PermanentError, PermanentError),
])
def test_one_table_of_s3_errors_read_two_ways(status, code, kind, ours, staging):
    exc = client_error(status, code)
    assert s3.kind(exc) == kind
    assert s3.is_missing(exc) == (kind == "missing")
    mine = s3.classify(exc, "GET s3://b/k")
    assert type(mine) is ours and str(mine).startswith("GET s3://b/k: S3 said")
    theirs = sources._s3_error(exc, "f.tar")
    assert isinstance(theirs, staging) and "f.tar" in str(theirs)


def test_a_dropped_connection_is_transient_everywhere():
    exc = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    assert s3.kind(exc) == "transient" and not s3.is_missing(exc)
    assert isinstance(s3.classify(exc, "PUT"), TransientError)
    assert isinstance(sources._s3_error(exc, "f.tar"), TransientError)
