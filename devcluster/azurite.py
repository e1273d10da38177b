"""Azurite's Blob service (an npm package, installed into .cache/azurite by
scripts/install-azurite.sh) on loopback for az:// fetch tests: the real Blob REST API,
shared key and SAS checked, blobs in a temporary folder.

``serve(folder)`` starts it with an empty container CONTAINER and returns the account's
endpoint URL; ``upload`` writes a blob; ``secret`` is what a Secret holds to point a
store at it (the emulator's well-known account key, or a SAS made from it). With a test
CA, ``serve`` runs it over HTTPS (a certificate for 127.0.0.1 from that CA) with
``--oauth basic``: bearer tokens are then accepted when they are JWTs whose ``iss``
starts with ``https://sts.windows.net/``, whose ``aud`` is ``https://storage.azure.com``
and whose ``nbf``, ``iat`` and ``exp`` hold now; the signature is not checked (Azurite's
BlobTokenAuthenticator). ``oauth_token`` makes one.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from devcluster import procs
from devcluster.certs import CertificateAuthority
from devcluster.cluster import free_port

ACCOUNT = "devstoreaccount1"  # Azurite's built-in account and key
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONTAINER = "models"


_TRUSTED: dict[str, str] = {}  # an HTTPS endpoint -> the CA file its certificate is from


@contextmanager
def serve(install: Path, workdir: Path, ca: CertificateAuthority | None = None) -> Iterator[str]:
    """Azurite's Blob service on a free loopback port, container CONTAINER created; the
    account's endpoint URL (http://127.0.0.1:PORT/devstoreaccount1, https:// with
    ``ca``, which also turns OAuth on)."""
    port = free_port()
    command = [str(install / "node_modules" / ".bin" / "azurite-blob"), "--blobHost", "127.0.0.1"]
    command += ["--blobPort", str(port), "--location", str(workdir)]
    command += ["--silent", "--skipApiVersionCheck", "--disableTelemetry"]
    endpoint = f"http://127.0.0.1:{port}/{ACCOUNT}"
    if ca is not None:
        pair = ca.issue(f"azurite-{port}", "127.0.0.1", hosts=("127.0.0.1",), server=True)
        command += ["--cert", str(pair.cert), "--key", str(pair.key), "--oauth", "basic"]
        endpoint = f"https://127.0.0.1:{port}/{ACCOUNT}"
        _TRUSTED[endpoint] = str(ca.cert_path)
    try:
        with procs.serving(
            "azurite", command, lambda: _create_container(endpoint), logs=workdir, timeout=60
        ):
            yield endpoint
    finally:
        _TRUSTED.pop(endpoint, None)


def client(endpoint: str) -> BlobServiceClient:
    key = {"account_name": ACCOUNT, "account_key": KEY}
    verify: bool | str = _TRUSTED.get(endpoint, True)
    return BlobServiceClient(  # wait_for retries
        endpoint, credential=key, retry_total=0, connection_verify=verify
    )


def oauth_token(lifetime: int = 3600, audience: str = "https://storage.azure.com") -> str:
    """A JWT that Azurite's ``--oauth basic`` accepts (unsigned: it checks no signature)."""
    now = int(time.time())
    claims = {
        "aud": audience,
        "iss": "https://sts.windows.net/00000000-0000-0000-0000-000000000000/",
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + lifetime,
        "oid": "11111111-1111-1111-1111-111111111111",
    }
    parts = ({"alg": "none", "typ": "JWT"}, claims)
    encoded = (base64.urlsafe_b64encode(json.dumps(p).encode()).rstrip(b"=") for p in parts)
    return b".".join(encoded).decode() + ".c2lnbmF0dXJl"


def _create_container(endpoint: str) -> bool:
    client(endpoint).create_container(CONTAINER)
    return True


def upload(endpoint: str, name: str, data: bytes | BinaryIO) -> None:
    blob = client(endpoint).get_blob_client(CONTAINER, name)
    blob.upload_blob(data, overwrite=True, max_concurrency=2)


def blob_url(endpoint: str, name: str) -> str:
    """A URL that reads blob ``name`` (with a read-only SAS of the container)."""
    return f"{endpoint}/{CONTAINER}/{name}?{sas()}"


def sas() -> str:
    """A read-only SAS of the container, valid for an hour."""
    return generate_container_sas(
        ACCOUNT,
        CONTAINER,
        account_key=KEY,
        permission=ContainerSasPermissions(read=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )


def secret(endpoint: str, credential: str = "key") -> dict[str, str]:
    """The keys of a Secret for ``endpoint``: the account key, or a SAS made from it."""
    if credential == "key":
        return {"AZURE_STORAGE_ENDPOINT": endpoint, "AZURE_STORAGE_KEY": KEY}
    return {"AZURE_STORAGE_ENDPOINT": endpoint, "AZURE_STORAGE_SAS_TOKEN": sas()}
