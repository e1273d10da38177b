"""fake-gcs-server (a Go module, built into .cache/bin by scripts/install-fake-gcs-server.sh)
on loopback for gs:// fetch tests: the real GCS JSON API, objects held in memory.

``serve(binary)`` starts it with an empty bucket BUCKET and returns its endpoint URL;
``upload`` writes an object through the JSON API; ``secret`` is what a Secret holds to
point a store at it (with a service account key whose token the tests look for in logs).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import httpx

from devcluster import certs, procs
from devcluster.cluster import free_port

BUCKET = "models"
KEY_ID = "hotswap-gcs-test-key-id"


@contextmanager
def serve(binary: Path, folder: Path, backend: str = "memory") -> Iterator[str]:
    """fake-gcs-server on a free loopback port with bucket BUCKET; its endpoint URL.
    ``backend="filesystem"`` keeps objects in ``folder`` (the benchmark's gigabytes)."""
    port = free_port()
    (folder / "data" / BUCKET).mkdir(parents=True, exist_ok=True)  # the bucket, created
    url = f"http://127.0.0.1:{port}"
    command = [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port)]
    command += ["-backend", backend, "-filesystem-root", str(folder / "objects")]
    command += ["-data", str(folder / "data"), "-public-host", f"127.0.0.1:{port}"]
    command += ["-log-level", "error"]
    with procs.serving("fake-gcs-server", command, lambda: _ready(url), logs=folder):
        yield url


def _ready(url: str) -> bool:
    return httpx.get(f"{url}/storage/v1/b/{BUCKET}", timeout=1).status_code == 200


def upload(url: str, name: str, data: bytes | BinaryIO) -> None:
    """Write object ``name`` of BUCKET (a media upload of the JSON API)."""
    target = f"{url}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={quote(name, safe='')}"
    httpx.post(target, content=data, timeout=300).raise_for_status()


def service_account_key() -> str:
    """A service account key (JSON) with a fresh RSA key, as the Google console makes."""
    pem = certs.key_pem(certs.new_key("rsa")).decode()
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "hotswap-test",
            "private_key_id": KEY_ID,
            "private_key": pem,
            "client_email": "reader@hotswap-test.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": "https://oauth2.googleapis.com/token",
        }
    )


def media_url(endpoint: str, name: str) -> str:
    """The JSON API media download URL of object ``name`` of BUCKET."""
    return f"{endpoint}/storage/v1/b/{BUCKET}/o/{quote(name, safe='')}?alt=media"


def secret(endpoint: str, key: str) -> dict[str, str]:
    """The keys of a Secret that points a store at ``endpoint`` with service account ``key``."""
    return {"GCS_ENDPOINT_URL": endpoint, "GOOGLE_APPLICATION_CREDENTIALS_JSON": key}
