"""`set checkpoint --resolve` of an oci:// URI: the layer's sha256 read from the
registry's manifest on the user's machine, and the URI pinned to that manifest.

The manifest (``GET /v2/REPOSITORY/manifests/REFERENCE`` over HTTPS, at most
``MAX_MANIFEST_BYTES``) is read with the registry's token flow: a 401 whose
``WWW-Authenticate: Bearer realm=...,service=...`` names a token server, asked for
``repository:REPOSITORY:pull`` with the user's login for the registry from a docker
config (``--registry-config PATH``, else ``$DOCKER_CONFIG/config.json``, else
``~/.docker/config.json``; none: anonymous), its Basic credentials sent to an https realm
(or one on the registry's host) only, the token to the registry only (never to where it
redirects). The layer is found as the runtime finds it (``hotswap_contract/registry.py``:
titled PATH, or the one layer without a PATH); its digest is the sha256 of its bytes,
so nothing is downloaded. The URI gets the manifest's digest (``@sha256:...``, the tag
kept as a name) so that a tag moved later cannot change what the spec names.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from hotswap_contract.redact import redact_uri
from hotswap_contract.registry import (
    ACCEPT,
    Reference,
    artifact_manifest,
    basic,
    docker_login,
    layer_title,
    parse_oci,
    titled,
)
from hotswap_operator.kubectl.api import PluginError

MAX_MANIFEST_BYTES = 4 << 20
MAX_TOKEN_BYTES = 64 << 10
TIMEOUT = 30.0
_CHALLENGE_PARAM = re.compile(r'([A-Za-z]+)="([^"]{0,2048})"')
_TOKEN = re.compile(r"[\x21-\x7e]{1,8192}")
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_ARCHIVE = re.compile(r"(^|[./+])(tar|gzip|zstd)($|[.+])")


@dataclass(frozen=True)
class Pinned:
    uri: str  # the URI with the manifest's digest
    sha256: str  # the layer's
    manifest: str  # sha256:HEX of the manifest


@dataclass(frozen=True)
class _Login:
    authorization: str | None  # Basic, for the token server
    source: str  # where it came from, for messages
    helper: bool  # the config keeps passwords in a credential helper, not read here


def resolve(uri: str, registry_config: Path | None = None) -> Pinned:
    """The layer ``uri`` names: its sha256, and ``uri`` pinned to its manifest."""
    ref = parse_oci(uri)
    if ref is None:
        raise PluginError(
            f"{redact_uri(uri)} is not oci://REGISTRY/REPOSITORY:TAG[/PATH] or "
            "oci://REGISTRY/REPOSITORY@sha256:DIGEST[/PATH] (lowercase repository, path of "
            "plain names); fix the URI"
        )
    data = _manifest(ref, _login(ref.registry, registry_config))
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if ref.reference.startswith("sha256:") and digest != ref.reference:
        raise PluginError(
            f"the registry's manifest for {redact_uri(uri)} does not hash to its digest"
        )
    return Pinned(ref.pinned(digest), _layer_sha256(_parse(data, uri), ref, uri), digest)


def _login(registry: str, path: Path | None) -> _Login:
    if path is None:
        folder = os.environ.get("DOCKER_CONFIG")
        path = Path(folder) / "config.json" if folder else Path.home() / ".docker/config.json"
        if not path.is_file():
            return _Login(None, "no docker config", False)
    try:
        text = path.read_text()
        login = docker_login(text, registry)
        config = json.loads(text)
    except OSError as err:
        raise PluginError(f"cannot read {path}: {err.strerror}; check --registry-config") from None
    except ValueError:
        raise PluginError(
            f'{path} is not a docker config ({{"auths": {{REGISTRY: {{"auth": ...}}}}}})'
        ) from None
    helper = bool(config.get("credsStore") or config.get("credHelpers"))
    return _Login(basic(login) if login else None, str(path), helper and login is None)


def _manifest(ref: Reference, login: _Login) -> bytes:
    url = ref.url("manifests", ref.reference)
    status, headers, data = _get(url, None, MAX_MANIFEST_BYTES, {"Accept": ACCEPT})
    if status == 401:
        token = _token(ref, headers.get("WWW-Authenticate", ""), login)
        status, _, data = _get(url, token, MAX_MANIFEST_BYTES, {"Accept": ACCEPT})
    shown = f"{ref.registry}/{ref.repository}"
    if status in (401, 403):
        helper = " (its passwords are in a credential helper, not read here)" * login.helper
        raise PluginError(
            f"{shown}: the registry refused access (HTTP {status}) with the login from "
            f"{login.source}{helper}; run docker login {ref.registry}, or give "
            "--registry-config PATH with an auths entry for it"
        )
    if status == 404:
        raise PluginError(
            f"{shown} has no manifest {ref.reference} (HTTP 404); check the tag or digest"
        )
    if status != 200:
        raise PluginError(f"{shown}: the registry answered HTTP {status} for the manifest")
    return data


def _token(ref: Reference, challenge: str, login: _Login) -> str | None:
    """The Authorization a 401 challenge asks for: Basic as it is, or a bearer token."""
    scheme = challenge.split(" ", 1)[0].lower()
    if scheme == "basic":
        return login.authorization
    params = dict(_CHALLENGE_PARAM.findall(challenge[:8192]))
    realm = params.get("realm", "")
    parts = urlsplit(realm)
    if scheme != "bearer" or parts.scheme not in ("http", "https"):
        raise PluginError(
            f"{ref.registry} asks for an authentication the plugin does not speak (only "
            "Basic and the Bearer token flow)"
        )
    query = {"scope": f"repository:{ref.repository}:pull"}
    if params.get("service"):
        query["service"] = params["service"]
    url = realm + ("&" if "?" in realm else "?") + urlencode(query)
    trusted = parts.scheme == "https" or parts.hostname == ref.registry.rsplit(":", 1)[0].lower()
    status, _, data = _get(url, login.authorization if trusted else None, MAX_TOKEN_BYTES, {})
    if status != 200:
        return None  # asked again without a token: the registry's refusal says it
    try:
        answer = json.loads(data)
        token = answer.get("token") or answer.get("access_token")
    except (ValueError, AttributeError, RecursionError):
        token = None
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise PluginError(f"{ref.registry}'s token server answered without a usable token")
    return f"Bearer {token}"


def _get(
    url: str, authorization: str | None, limit: int, headers: dict[str, str]
) -> tuple[int, Any, bytes]:
    """Status, headers and body (200 only, at most ``limit`` bytes) of GET ``url``; the
    Authorization for ``url``'s origin only (an unredirected header)."""
    request = urllib.request.Request(url, headers=headers)
    if authorization:
        request.add_unredirected_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:  # https or the realm's
            data = answer.read(limit + 1)
            if len(data) > limit:
                raise PluginError(f"{redact_uri(url)} answered over {limit} bytes")
            return answer.status, answer.headers, data
    except urllib.error.HTTPError as err:
        return err.code, err.headers, b""
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise PluginError(f"cannot read {redact_uri(url)}: {reason}") from None


def _parse(data: bytes, uri: str) -> dict[str, Any]:
    try:
        return artifact_manifest(data)
    except ValueError as err:
        raise PluginError(f"{redact_uri(uri)}: {err}") from None


def _layer_sha256(manifest: dict[str, Any], ref: Reference, uri: str) -> str:
    """The sha256 of the layer the runtime reads for ``ref``: the one titled PATH, or
    without a PATH the artifact's only layer."""
    layers = [layer for layer in manifest["layers"] if isinstance(layer, dict)]
    matching = titled(manifest, ref.path) if ref.path else layers
    if len(matching) != 1:
        named = f"titled {ref.path!r}" if ref.path else "in all"
        titles = sorted({str(t) for layer in layers if (t := layer_title(layer))})[:8]
        raise PluginError(
            f"{redact_uri(uri)}: the artifact has {len(matching)} layers {named} (one "
            f"expected; titles: {', '.join(map(repr, titles)) or 'none'}); name the file "
            "as oci://REGISTRY/REPOSITORY:TAG/PATH"
        )
    layer = matching[0]
    media_type = str(layer.get("mediaType", ""))
    if _ARCHIVE.search(media_type):
        raise PluginError(
            f"{redact_uri(uri)}: the layer is an archive ({media_type!r}), which the runtime "
            "does not unpack; push the file itself as a layer (oras push, ModelPack .raw)"
        )
    match = _DIGEST.fullmatch(str(layer.get("digest", "")))
    if match is None:
        raise PluginError(f"{redact_uri(uri)}: the layer's digest is not sha256:HEX")
    return match[1]
