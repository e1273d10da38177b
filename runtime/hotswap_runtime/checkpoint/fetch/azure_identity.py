"""An az:// token from Azure AD workload identity, asked for explicitly.

Only when the checkpoint Secret holds ``AZURE_USE_WORKLOAD_IDENTITY: "true"`` (as
``GCS_USE_METADATA_SERVER`` for gs://). The azure-workload-identity webhook sets four
variables in pods labelled ``azure.workload.identity/use: "true"`` whose ServiceAccount
names a client (annotation ``azure.workload.identity/client-id``): ``AZURE_CLIENT_ID``,
``AZURE_TENANT_ID``, ``AZURE_FEDERATED_TOKEN_FILE`` (the projected ServiceAccount token)
and ``AZURE_AUTHORITY_HOST``. The runtime reads the token file (a regular file of at
most ``MAX_ASSERTION_BYTES``, a JWT) and POSTs it as the client assertion to
``{AZURE_AUTHORITY_HOST}/{AZURE_TENANT_ID}/oauth2/v2.0/token`` (client credentials,
scope ``SCOPE``) through ``http.post_form``: https only (the assertion is a credential),
the address policy (``login.microsoftonline.com`` is public, so allowed by default; an
authority on loopback or link-local only where the admin allows it in
``policy.fetchAllowedNetworks``), and the whole exchange within the connect plus the idle
bound. The answer is hostile: read up to ``MAX_ANSWER_BYTES``, only ``access_token``
(one visible-ASCII word) and ``expires_in`` kept, a refusal described by its status
code alone. Tokens are kept per (token URL, client, assertion) until ``kept_tokens.REFRESH_SECONDS``
before they expire; neither the token nor the assertion is ever logged or shown.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import stat
from urllib.parse import quote, urlsplit

from hotswap_runtime.checkpoint.fetch.http import post_form
from hotswap_runtime.checkpoint.fetch.kept_tokens import KeptTokens
from hotswap_runtime.checkpoint.fetch.net import NetPolicy, stalled
from hotswap_runtime.errors import FetchError

KEY = "AZURE_USE_WORKLOAD_IDENTITY"
AUTHORITY = "https://login.microsoftonline.com"
SCOPE = "https://storage.azure.com/.default"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_BYTES = 64 << 10
MAX_ANSWER_BYTES = 64 << 10
KEPT = 8
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_TOKEN = re.compile(r"[\x21-\x7e]{1,16384}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_FIX = (
    'label the pods azure.workload.identity/use: "true" (spec.runtime.podMetadata.labels) '
    "and annotate their ServiceAccount with azure.workload.identity/client-id "
    "(spec.runtime.serviceAccount.annotations)"
)
Key = tuple[str, str, str]  # token URL, client id, sha256 of the assertion
_kept: KeptTokens[Key] = KeptTokens(KEPT)


def wanted(secret: dict[str, str]) -> bool:
    return secret.get(KEY, "").lower() == "true"


async def workload_token(shown: str, policy: NetPolicy) -> str:
    """An access token for Azure Storage of the pod's workload identity."""
    where = f"{shown} (its token from Azure AD workload identity, {KEY} of the Secret)"
    url, client = _token_url(where), _env_id("AZURE_CLIENT_ID", where)
    assertion = _assertion(where)
    key = (url, client, hashlib.sha256(assertion.encode()).hexdigest())
    kept = _kept.get(key)
    if kept is not None:
        return kept
    form = {
        "grant_type": "client_credentials",
        "client_id": client,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        "scope": SCOPE,
    }
    try:
        async with asyncio.timeout(policy.connect_seconds + policy.idle_seconds):
            status, answer = await post_form(url, form, policy, where, MAX_ANSWER_BYTES)
    except TimeoutError:
        raise stalled(where, policy) from None
    token, lifetime = _answer(status, answer, where)
    _kept.keep(key, token, lifetime)
    return token


def _token_url(where: str) -> str:
    authority = (os.environ.get("AZURE_AUTHORITY_HOST") or AUTHORITY).rstrip("/")
    parts = urlsplit(authority)
    if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
        raise FetchError(
            f"cannot fetch checkpoint {where}: AZURE_AUTHORITY_HOST of the pod is not an "
            "https URL (the service account token is sent there); fix the pod's environment"
        )
    return f"{authority}/{quote(_env_id('AZURE_TENANT_ID', where), safe='')}/oauth2/v2.0/token"


def _env_id(name: str, where: str) -> str:
    value = os.environ.get(name, "")
    if not _ID.fullmatch(value):
        raise FetchError(
            f"cannot fetch checkpoint {where}: the pod has no valid {name}; {_FIX}, or put "
            "a SAS or the account key in the Secret instead"
        )
    return value


def _assertion(where: str) -> str:
    """The projected ServiceAccount token: a regular file of at most
    MAX_ASSERTION_BYTES holding a JWT (opened without blocking, checked before reading)."""
    path = os.environ.get("AZURE_FEDERATED_TOKEN_FILE", "")
    named = f"the service account token file (AZURE_FEDERATED_TOKEN_FILE {path!r})"
    if not path:
        raise FetchError(
            f"cannot fetch checkpoint {where}: the pod has no AZURE_FEDERATED_TOKEN_FILE; {_FIX}"
        )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise FetchError(
            f"cannot fetch checkpoint {where}: {named} cannot be opened "
            f"({type(exc).__name__}); {_FIX}"
        ) from None
    try:
        info = os.fstat(fd)
        data = b""
        if stat.S_ISREG(info.st_mode) and info.st_size <= MAX_ASSERTION_BYTES:
            data = os.read(fd, MAX_ASSERTION_BYTES + 1)
    finally:
        os.close(fd)
    assertion = data.decode("ascii", "replace").strip()
    if len(data) > MAX_ASSERTION_BYTES or not _JWT.fullmatch(assertion):
        raise FetchError(
            f"cannot fetch checkpoint {where}: {named} is not a service account token (a "
            f"JWT in a regular file of at most {MAX_ASSERTION_BYTES} bytes); {_FIX}"
        )
    return assertion


def _answer(status: int, answer: bytes | None, where: str) -> tuple[str, float]:
    """The token and its lifetime in seconds (0: unknown) from the token endpoint's
    answer, which is never quoted."""
    if status in (400, 401, 403):
        raise FetchError(
            f"cannot fetch checkpoint {where}: Azure AD refused the pod's service account "
            f"token (HTTP {status}); check the federated identity credential of "
            "AZURE_CLIENT_ID (issuer: the cluster's OIDC issuer; subject: "
            "system:serviceaccount:NAMESPACE:NAME-runtime) and its access to the container"
        )
    if status != 200:
        raise FetchError(
            f"cannot fetch checkpoint {where}: the token endpoint answered HTTP {status}"
        )
    try:
        document = json.loads(answer or b"")
        token, lifetime = document["access_token"], document.get("expires_in", 0)
        lifetime = float(lifetime) if str(lifetime).isdigit() else 0.0
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        token = None
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise FetchError(
            f"cannot fetch checkpoint {where}: the token endpoint's answer is not a token "
            f"(JSON with access_token, at most {MAX_ANSWER_BYTES} bytes)"
        )
    return token, lifetime
