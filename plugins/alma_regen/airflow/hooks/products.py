"""The hook of the `alma_products_s3` connection: where products are published.

The connection is the Amazon provider's `aws` kind (login/password or a role,
extra {"endpoint_url": ..., "region_name": ...}); this hook only names the
default connection. `alma_regen.products` takes the client it gives, and uses
the environment instead when it runs without Airflow (the CLI).
"""
from __future__ import annotations

from airflow.providers.amazon.aws.hooks.s3 import S3Hook


class AlmaProductsS3Hook(S3Hook):
    default_conn_name = "alma_products_s3"
    hook_name = "ALMA products (S3)"

    def __init__(self, aws_conn_id: str = default_conn_name, **kwargs):
        super().__init__(aws_conn_id=aws_conn_id, **kwargs)


def api_server_client(conn_id: str):
    """The client of connection `conn_id` for a page of the api-server: read through the
    secrets backends (no task context there), short timeouts so a dead bucket fails the
    panel, not the page."""
    from airflow.models.connection import Connection

    from ...s3 import make_client
    conn = Connection.get_connection_from_secrets(conn_id)
    extra = conn.extra_dejson
    return make_client(endpoint=extra.get("endpoint_url") or extra.get("host"), region=extra.get("region_name"),
                       key_id=conn.login, secret=conn.password, connect_timeout=5, read_timeout=10, attempts=2)


def s3_client(conn_id: str):
    """The boto3 S3 client of the products connection `conn_id` (an `aws` connection)."""
    return AlmaProductsS3Hook(conn_id).get_conn()
