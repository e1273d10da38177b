"""gs:// checkpoints: a GCS JSON API media download over the hardened HTTP client.

``gs://BUCKET/OBJECT`` is ``GET {endpoint}/storage/v1/b/BUCKET/o/OBJECT?alt=media``,
read by ``http.open_http``: so the address policy on every connection, the idle and
connect bounds, ranged parts in parallel, resume and the redirect checks are the ones
http(s):// has. Ranged parts name the ``generation`` the first response read
(``x-goog-generation``), so every part reads one version of the object.

Credentials come from the Secret named by ``checkpoint.secretRef`` only:
``GOOGLE_APPLICATION_CREDENTIALS_JSON`` (a service account key) becomes a self-signed
JWT, signed here by google-auth, with the read-only scope: no token endpoint is called,
so no address the key names is ever connected to. ``GCS_USE_METADATA_SERVER: "true"``
asks the GKE metadata server instead (Workload Identity, ``gcp_metadata.py``: only where
the admin's address policy allows it). Without either the request carries no token (a
public object, or an emulator). ``GCS_ENDPOINT_URL`` replaces
``https://storage.googleapis.com`` (an emulator, a private endpoint); the address policy
checks it like any other host.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote, urlsplit

import httpx
from google.auth.exceptions import GoogleAuthError, TransportError
from google.oauth2 import service_account

from hotswap_contract.redact import redact_uri
from hotswap_runtime.checkpoint.fetch import gcp_metadata
from hotswap_runtime.checkpoint.fetch.http import Via, open_http
from hotswap_runtime.checkpoint.fetch.net import NetPolicy
from hotswap_runtime.checkpoint.fetch.stream import Body
from hotswap_runtime.errors import FetchError

ENDPOINT = "https://storage.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
_KEY = "GOOGLE_APPLICATION_CREDENTIALS_JSON"


@asynccontextmanager
async def open_gcs(uri: str, secret: dict[str, str], policy: NetPolicy) -> AsyncIterator[Body]:
    """The body of the object named by ``uri`` (gs://BUCKET/OBJECT)."""
    shown = redact_uri(uri)
    url = media_url(uri, secret.get("GCS_ENDPOINT_URL") or ENDPOINT, shown)
    token = _token(secret[_KEY], shown) if secret.get(_KEY) else None
    if token is None and gcp_metadata.wanted(secret):
        token = await gcp_metadata.metadata_token(shown, policy)
    via = Via(shown, pin=_pin, ranged=True)
    bearer = f"Bearer {token}" if token else None
    async with open_http(url, bearer, policy, via=via) as body:
        yield body


def media_url(uri: str, endpoint: str, shown: str) -> str:
    """The JSON API media URL of ``uri`` at ``endpoint``."""
    parts = urlsplit(uri)
    bucket, name = parts.netloc, parts.path.lstrip("/")
    if parts.scheme != "gs" or not bucket or not name or parts.query or parts.fragment:
        raise FetchError(f"checkpoint URI {shown} is not gs://BUCKET/OBJECT")
    base = urlsplit(endpoint)
    if base.scheme not in ("http", "https") or not base.netloc or base.query:
        raise FetchError(
            f"cannot fetch checkpoint {shown}: GCS_ENDPOINT_URL of the Secret is not an "
            "http(s) URL; fix the Secret"
        )
    path = f"/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"
    return f"{endpoint.rstrip('/')}{path}?alt=media"


def _pin(headers: httpx.Headers) -> tuple[dict[str, str], dict[str, str]]:
    generation = headers.get("x-goog-generation", "")
    return ({"generation": generation} if generation.isdigit() else {}), {}


def _token(key: str, shown: str) -> str:
    """A self-signed JWT of the service account key ``key`` (no network call)."""
    try:
        info = json.loads(key)
        credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=[SCOPE], always_use_jwt_access=True
        )
        credentials.refresh(_NoRequest())
    except (ValueError, TypeError, KeyError, GoogleAuthError):
        raise FetchError(
            f"cannot fetch checkpoint {shown}: {_KEY} of the Secret named by "
            "checkpoint.secretRef is not a service account key (JSON, type service_account)"
        ) from None
    token = credentials.token
    if not isinstance(token, str):
        raise FetchError(f"cannot fetch checkpoint {shown}: {_KEY} gave no token")
    return token


class _NoRequest:
    """google-auth's transport, never called: a self-signed JWT needs no token endpoint."""

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise TransportError("a self-signed JWT needs no network call")  # type: ignore[no-untyped-call]
