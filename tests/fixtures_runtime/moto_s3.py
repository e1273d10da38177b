"""moto's S3 server on loopback for s3:// fetch tests: the real S3 protocol, one bucket.

``serve()`` starts the server with an empty bucket BUCKET; ``client()`` writes to it with
the test credentials; ``secret()`` is what a Secret holds to point a store at it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from .server import free_port

KEY_ID = "AKIDHOTSWAPS3TEST"
SECRET_KEY = "hotswap-s3-secret-key"
REGION = "us-east-1"
BUCKET = "models"


@contextmanager
def serve() -> Iterator[str]:
    """moto's S3 server on a free loopback port, bucket BUCKET created; its endpoint URL."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        client(url).create_bucket(Bucket=BUCKET)
        yield url
    finally:
        server.stop()


def client(endpoint: str) -> Any:
    """A boto3 S3 client of ``endpoint`` with the test credentials."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )


def secret(endpoint: str) -> dict[str, str]:
    """The keys of a Secret that points a store at ``endpoint`` with the test credentials."""
    return {
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": REGION,
    }
