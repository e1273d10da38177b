"""az:// checkpoints (and https://ACCOUNT.blob.core.windows.net/... ones with an Azure
Secret): an Azure Blob ``Get Blob`` over the hardened HTTP client.

``az://CONTAINER/BLOB`` is ``GET {endpoint}/CONTAINER/BLOB`` with ``x-ms-version``, read
by ``http.open_http``: the address policy on every connection, the idle and connect
bounds, ranged parts in parallel, resume and the redirect checks are the ones http(s)://
has. Ranged parts carry ``If-Match`` with the first response's ETag, so every part reads
one version of the blob (a changed blob fails with HTTP 412).

Everything comes from the Secret named by ``checkpoint.secretRef``: the account
(``AZURE_STORAGE_ACCOUNT``, endpoint ``https://ACCOUNT.blob.core.windows.net``) or an
endpoint (``AZURE_STORAGE_ENDPOINT``: an emulator, a private endpoint; checked by the
address policy like any host), and a credential: ``AZURE_STORAGE_SAS_TOKEN`` (the query
of a SAS URL), or ``AZURE_STORAGE_KEY`` (the account key), from which azure-storage-blob
signs a read-only SAS for this one blob, valid ``SAS_SECONDS``, here: the key itself
never leaves the pod. Without either, ``AZURE_USE_WORKLOAD_IDENTITY: "true"`` asks Azure
AD for a token of the pod's workload identity (``azure_identity.py``), sent as
``Authorization: Bearer`` to the account's https endpoint only. Without a credential the
request is anonymous (a public container).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote, urlsplit

import httpx
from azure.storage.blob import BlobSasPermissions, generate_blob_sas

from hotswap_contract.redact import redact_uri
from hotswap_runtime.checkpoint.fetch import azure_identity
from hotswap_runtime.checkpoint.fetch.http import Via, open_http
from hotswap_runtime.checkpoint.fetch.net import NetPolicy
from hotswap_runtime.checkpoint.fetch.stream import Body
from hotswap_runtime.errors import FetchError

API_VERSION = "2021-08-06"
SAS_SECONDS = 3600
BLOB_HOST = ".blob.core.windows.net"
KEYS = (
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_ENDPOINT",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_KEY",
    azure_identity.KEY,
)


def is_blob_url(uri: str) -> bool:
    """Whether ``uri`` is an https URL of an Azure Blob Storage account."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
    except ValueError:
        return False
    return parts.scheme == "https" and host.endswith(BLOB_HOST) and host != BLOB_HOST[1:]


@asynccontextmanager
async def open_azure(uri: str, secret: dict[str, str], policy: NetPolicy) -> AsyncIterator[Body]:
    """The body of the blob named by ``uri`` (az://CONTAINER/BLOB or a blob URL)."""
    shown = redact_uri(uri)
    endpoint, container, blob = _locate(uri, secret, shown)
    query = _credential(secret, endpoint, container, blob, shown)
    bearer = None
    if not query and azure_identity.wanted(secret):
        if not endpoint.startswith("https://"):
            raise FetchError(
                f"cannot fetch checkpoint {shown}: a workload identity token is sent over "
                "https only, and AZURE_STORAGE_ENDPOINT of the Secret is http; fix the Secret"
            )
        bearer = "Bearer " + await azure_identity.workload_token(shown, policy)
    url = f"{endpoint}/{quote(container, safe='')}/{quote(blob, safe='/')}"
    via = Via(shown, headers={"x-ms-version": API_VERSION}, pin=_pin)
    async with open_http(f"{url}?{query}" if query else url, bearer, policy, via=via) as body:
        yield body


def _locate(uri: str, secret: dict[str, str], shown: str) -> tuple[str, str, str]:
    """The account endpoint (no trailing slash), container and blob name of ``uri``."""
    parts = urlsplit(uri)
    if parts.scheme == "az":
        container, blob = parts.netloc, parts.path.lstrip("/")  # literal, as gs:// and s3://
        endpoint = _endpoint(secret, shown)
    else:
        container, _, blob = unquote(parts.path.lstrip("/")).partition("/")  # a URL: decoded
        endpoint = f"https://{parts.netloc}"
    if not container or not blob or parts.fragment or (parts.scheme == "az" and parts.query):
        raise FetchError(f"checkpoint URI {shown} is not az://CONTAINER/BLOB")
    return endpoint, container, blob


def _endpoint(secret: dict[str, str], shown: str) -> str:
    if endpoint := secret.get("AZURE_STORAGE_ENDPOINT"):
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise FetchError(
                f"cannot fetch checkpoint {shown}: AZURE_STORAGE_ENDPOINT of the Secret is "
                "not an http(s) URL; fix the Secret"
            )
        return endpoint.rstrip("/")
    account = secret.get("AZURE_STORAGE_ACCOUNT", "")
    if not account.isalnum() or not account.islower():
        raise FetchError(
            f"cannot fetch checkpoint {shown}: an az:// URI needs AZURE_STORAGE_ACCOUNT (the "
            "storage account's name) or AZURE_STORAGE_ENDPOINT in the Secret named by "
            "checkpoint.secretRef"
        )
    return f"https://{account}{BLOB_HOST}"


def _credential(
    secret: dict[str, str], endpoint: str, container: str, blob: str, shown: str
) -> str:
    """The query that authorizes reading the blob: the Secret's SAS, one signed here
    with the account key, or none."""
    if sas := secret.get("AZURE_STORAGE_SAS_TOKEN"):
        return sas.lstrip("?")
    key = secret.get("AZURE_STORAGE_KEY")
    if not key:
        return ""
    account = secret.get("AZURE_STORAGE_ACCOUNT") or _account_of(endpoint)
    try:
        return generate_blob_sas(
            account,
            container,
            blob,
            account_key=key,
            permission=BlobSasPermissions(read=True),
            expiry=datetime.now(UTC) + timedelta(seconds=SAS_SECONDS),
        )
    except (ValueError, TypeError):  # binascii.Error is a ValueError: not base64
        raise FetchError(
            f"cannot fetch checkpoint {shown}: AZURE_STORAGE_KEY of the Secret named by "
            "checkpoint.secretRef is not a storage account key (base64)"
        ) from None


def _account_of(endpoint: str) -> str:
    """The account an endpoint names: ACCOUNT.blob.core.windows.net, or the first path
    segment of an emulator's endpoint (Azurite: http://host:10000/devstoreaccount1)."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if host.endswith(BLOB_HOST):
        return host.removesuffix(BLOB_HOST)
    return parts.path.strip("/").partition("/")[0]


def _pin(headers: httpx.Headers) -> tuple[dict[str, str], dict[str, str]]:
    etag = headers.get("etag", "")
    return {}, ({"If-Match": etag} if etag.isascii() and etag.isprintable() and etag else {})
