"""oci:// checkpoints: a file stored as one layer of an OCI artifact in a registry.

``oci://REGISTRY/REPOSITORY:TAG[/PATH]`` or ``oci://REGISTRY/REPOSITORY@sha256:DIGEST[/PATH]``
(a tag and a digest together: the digest wins; the grammar, the manifest types, layer
titles and docker config logins: ``hotswap_contract/registry.py``, shared with `kubectl
hotswap set checkpoint --resolve`). The registry is spoken to over HTTPS
with the distribution API (``/v2/``), every request through ``http.follow``: each hop's
address checked, redirects (registries send blob GETs to their storage) checked again,
the credential for the registry's origin only.

1. The manifest (OCI image manifest or Docker v2 schema 2; at most
   ``MAX_MANIFEST_BYTES``): by digest its sha256 must be that digest; an index
   (several platforms) is refused. ``GET`` answered 401 starts the token flow: the
   ``WWW-Authenticate: Bearer realm=...,service=...`` challenge names the token server,
   whose address is checked like a redirect target; it is asked for
   ``repository:REPOSITORY:pull`` with the Secret's ``.dockerconfigjson`` credentials
   (``Basic``: sent to an https realm, or one on the registry's host, only), and its
   token (at most ``MAX_TOKEN_BYTES`` of JSON) is the registry's bearer credential.
2. The layer: the one whose title annotation (``org.opencontainers.image.title``, as
   ORAS writes, or ModelPack's ``org.cncf.model.filepath``) is PATH, or without a PATH
   the one whose digest is the spec's sha256. Its digest must be ``sha256:`` the spec's
   sha256: the layer is the file itself (ModelPack's ``.raw`` weights, ``oras push``
   of a file), so the store's sha256 check of the file is the layer's digest check.
   A tar or compressed layer (a modelcars image's ``/models/...``, ModelPack's
   ``.tar`` types) is refused: its digest pins the archive, not the file, and unpacking
   hostile archives in the runtime is not worth its surface; the kubelet mounts such
   images itself (image volumes).
3. The blob: ``GET /v2/REPOSITORY/blobs/DIGEST`` through ``open_http`` (ranged parts,
   resume, the redirect to storage checked, the token not sent there).

Failures are described by status code or exception type; no text, header or token the
registry sent reaches a reason.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from hotswap_contract import registry
from hotswap_contract.redact import redact_uri
from hotswap_contract.registry import ACCEPT, Reference, artifact_manifest, titled
from hotswap_runtime.checkpoint.fetch.credentials import DOCKER_CONFIG
from hotswap_runtime.checkpoint.fetch.http import (
    check_status,
    follow,
    http_client,
    open_http,
    parse_url,
    raw_chunks,
)
from hotswap_runtime.checkpoint.fetch.net import NetPolicy
from hotswap_runtime.checkpoint.fetch.stream import Body
from hotswap_runtime.errors import FetchError, FetchRefused, IntegrityError

MAX_MANIFEST_BYTES = 4 << 20
MAX_TOKEN_BYTES = 64 << 10
Key = tuple[str, str, str, str | None]  # registry, repository, digest, Basic credential
REUSE_SECONDS = 30.0  # well within a registry token's life (Docker Hub's: 300 s)
REUSED = 4
REUSED_BYTES = 256 << 10
_CHALLENGE_PARAM = re.compile(r'([A-Za-z]+)="([^"]{0,2048})"')
_TOKEN = re.compile(r"[\x21-\x7e]{1,8192}")


def parse_oci(uri: str) -> Reference:
    """What ``uri`` names (``registry.py``); FetchError for anything else."""
    ref = registry.parse_oci(uri)
    if ref is None:
        raise FetchError(
            f"checkpoint URI {redact_uri(uri)} is not oci://REGISTRY/REPOSITORY:TAG[/PATH] or "
            "oci://REGISTRY/REPOSITORY@sha256:DIGEST[/PATH] (lowercase repository, path of "
            "plain names)"
        )
    return ref


@asynccontextmanager
async def open_oci(
    uri: str, sha256: str, secret: dict[str, str], policy: NetPolicy
) -> AsyncIterator[Body]:
    """The body of the layer ``uri`` names (whose digest must be ``sha256``)."""
    ref = parse_oci(uri)
    shown = redact_uri(uri)
    basic = registry_login(secret.get(DOCKER_CONFIG), ref.registry, shown)
    key = (ref.registry, ref.repository, ref.reference, basic)
    resolved = _RESOLVED.recall(key)
    if resolved is None:
        async with http_client(policy) as client:
            resolved = await _manifest(client, ref, basic, policy, shown)
        _RESOLVED.remember(key, resolved)
    auth, manifest = resolved
    digest = pick_layer(manifest, ref, sha256, shown)
    async with open_http(ref.url("blobs", digest), auth, policy, shown=shown) as body:
        yield body


class _Resolved:
    """The manifests of digest references (immutable) and the credential that read them,
    for ``REUSE_SECONDS``: a sharded checkpoint's files, read one after another, ask the
    token server and the manifest once. At most ``REUSED`` entries of at most
    ``REUSED_BYTES`` each; used on the fetch loop's one thread only."""

    def __init__(self) -> None:
        self._entries: OrderedDict[Key, tuple[float, str | None, dict[str, Any]]] = OrderedDict()

    def recall(self, key: Key) -> tuple[str | None, dict[str, Any]] | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1], entry[2]

    def remember(self, key: Key, resolved: tuple[str | None, dict[str, Any]]) -> None:
        auth, manifest = resolved
        if not key[2].startswith("sha256:") or len(json.dumps(manifest)) > REUSED_BYTES:
            return
        self._entries[key] = (time.monotonic() + REUSE_SECONDS, auth, manifest)
        self._entries.move_to_end(key)
        while len(self._entries) > REUSED:
            self._entries.popitem(last=False)


_RESOLVED = _Resolved()


def registry_login(config: str | None, host: str, shown: str) -> str | None:
    """``Basic`` credentials for the registry ``host`` from a ``.dockerconfigjson`` (its
    ``auths`` entry whose key, without scheme and path, is the registry), or None."""
    if not config:
        return None
    try:
        login = registry.docker_login(config, host)
    except ValueError:
        raise FetchError(
            f"cannot fetch checkpoint {shown}: key {DOCKER_CONFIG} of the Secret named by "
            'checkpoint.secretRef is not a docker config ({"auths": {REGISTRY: {"auth": '
            "...}}}); fix the Secret"
        ) from None
    return registry.basic(login) if login else None


async def _manifest(
    client: httpx.AsyncClient, ref: Reference, basic: str | None, policy: NetPolicy, shown: str
) -> tuple[str | None, dict[str, Any]]:
    """The registry credential to use (None: anonymous) and the checked manifest."""
    url = ref.url("manifests", ref.reference)
    accept = {"Accept": ACCEPT}
    status, headers, data = await _small(client, url, None, policy, shown, accept)
    auth = None
    if status == 401:
        auth = await _login(client, ref, headers.get("www-authenticate", ""), basic, policy, shown)
        status, headers, data = await _small(client, url, auth, policy, shown, accept)
    check_status(status, shown)
    if ref.reference.startswith("sha256:") and (
        "sha256:" + hashlib.sha256(data).hexdigest() != ref.reference
    ):
        raise IntegrityError(
            f"checkpoint {shown}: the registry's manifest does not match the URI's digest"
        )
    return auth, _parse_manifest(data, shown)


async def _login(
    client: httpx.AsyncClient,
    ref: Reference,
    challenge: str,
    basic: str | None,
    policy: NetPolicy,
    shown: str,
) -> str | None:
    """The credential a 401 challenge asks for: the Secret's Basic one, or a token."""
    scheme = challenge.split(" ", 1)[0].lower()
    if scheme == "basic":
        return basic
    params = dict(_CHALLENGE_PARAM.findall(challenge[:8192]))
    realm = params.get("realm", "")
    if scheme != "bearer" or urlsplit(realm).scheme not in ("http", "https"):
        raise FetchError(
            f"cannot fetch checkpoint {shown}: the registry asked for an authentication "
            "hotswap does not speak (only Basic and the Bearer token flow)"
        )
    query = {"scope": f"repository:{ref.repository}:pull"}
    if params.get("service"):
        query["service"] = params["service"]
    token_url = realm + ("&" if "?" in realm else "?") + urlencode(query)
    url, _ = parse_url(token_url, shown)
    trusted = url.scheme == "https" or url.host == ref.registry.rsplit(":", 1)[0].lower()
    try:
        status, _, data = await _small(
            client, token_url, basic if trusted else None, policy, shown, {}, True, MAX_TOKEN_BYTES
        )
    except FetchRefused as exc:  # our own words: name the token server as the place
        prefix = f"cannot fetch checkpoint {shown}: "
        raise FetchRefused(
            f"{prefix}the registry's token server: {str(exc).removeprefix(prefix)}"
        ) from None
    if status in (401, 403):
        raise FetchError(
            f"cannot fetch checkpoint {shown}: the registry's token server denied access "
            f"(HTTP {status}); check key {DOCKER_CONFIG} of the Secret named by "
            "checkpoint.secretRef"
        )
    check_status(status, shown)
    return "Bearer " + _token(data, shown)


def _token(data: bytes, shown: str) -> str:
    try:
        answer = json.loads(data)
        token = answer.get("token") or answer.get("access_token")
    except (ValueError, AttributeError, RecursionError):
        token = None
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise FetchError(
            f"cannot fetch checkpoint {shown}: the registry's token server answered without "
            "a usable token"
        )
    return token


async def _small(
    client: httpx.AsyncClient,
    uri: str,
    auth: str | None,
    policy: NetPolicy,
    shown: str,
    extra: dict[str, str],
    chosen: bool = False,
    limit: int = MAX_MANIFEST_BYTES,
) -> tuple[int, httpx.Headers, bytes]:
    """Status, headers and body (200 only, at most ``limit`` bytes) of GET ``uri``."""
    url, _ = parse_url(uri, shown)
    response = await follow(client, url, auth, policy, shown, extra, chosen)
    try:
        if response.status_code != 200:
            return response.status_code, response.headers, b""
        data = bytearray()
        async for chunk in raw_chunks(response, shown, policy):
            data += chunk
            if len(data) > limit:
                raise FetchError(
                    f"cannot fetch checkpoint {shown}: a registry answer is over {limit} bytes"
                )
        return 200, response.headers, bytes(data)
    finally:
        await response.aclose()


def _parse_manifest(data: bytes, shown: str) -> dict[str, Any]:
    try:
        return artifact_manifest(data)
    except ValueError as err:
        raise FetchError(f"cannot fetch checkpoint {shown}: {err}") from None


def pick_layer(manifest: dict[str, Any], ref: Reference, sha256: str, shown: str) -> str:
    """The digest of the layer ``ref`` names, which must be ``sha256:`` ``sha256``."""
    layers = [layer for layer in manifest["layers"] if isinstance(layer, dict)]
    if ref.path is None:
        matching = [layer for layer in layers if layer.get("digest") == f"sha256:{sha256}"]
        what = "whose digest is spec.checkpoint.sha256"
    else:
        matching = titled(manifest, ref.path)
        what = f"titled {ref.path!r}"
    if len(matching) != 1:
        raise FetchError(
            f"cannot fetch checkpoint {shown}: the artifact has {len(matching)} layers {what} "
            "(one expected); check the URI's path and spec.checkpoint.sha256"
        )
    if matching[0].get("digest") != f"sha256:{sha256}":
        raise IntegrityError(
            f"checkpoint {shown}: the layer's digest is not spec.checkpoint.sha256; the "
            "sha256 in the spec is wrong, or the layer is an archive (tar, gzip: a modelcars "
            "image) rather than the file itself, which hotswap does not read"
        )
    return f"sha256:{sha256}"
