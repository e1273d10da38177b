"""oci:// URIs: which artifact and layer of a registry one names, and what both sides
read the same way (the manifest types, a layer's title, a docker config's login).

``oci://REGISTRY/REPOSITORY:TAG[/PATH]`` or ``oci://REGISTRY/REPOSITORY@sha256:DIGEST[/PATH]``
(a tag and a digest together: the digest wins, the tag is a name only). PATH is plain
names (no ``..``, no percent-encoding, no query): the title of one layer
(``org.opencontainers.image.title``, as ORAS writes, or ModelPack's
``org.cncf.model.filepath``); without a PATH the layer is the one whose digest is the
spec's sha256. The runtime fetches (``fetch/oci.py``) and `kubectl hotswap set checkpoint
--resolve` pins (``kubectl/checksum.py``) through this grammar.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = (  # accepted only to say clearly that an index is not read
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))
TITLES = ("org.opencontainers.image.title", "org.cncf.model.filepath")
_HOST = r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?(:[0-9]{1,5})?"
_COMPONENT = r"[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*"
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}"
_URI = re.compile(
    rf"oci://(?P<registry>{_HOST})/(?P<repository>{_COMPONENT}(/{_COMPONENT}){{0,15}})"
    r"(:(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?(@sha256:(?P<digest>[0-9a-f]{64}))?"
    rf"(/(?P<path>{_SEGMENT}(/{_SEGMENT}){{0,15}}))?"
)


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port]
    repository: str
    reference: str  # a tag, or sha256:DIGEST
    path: str | None  # the layer's title, or None: the layer whose digest is the sha256
    tag: str | None = None  # the URI's tag, also when a digest is the reference

    def url(self, kind: str, name: str) -> str:
        return f"https://{self.registry}/v2/{self.repository}/{kind}/{name}"

    def pinned(self, digest: str) -> str:
        """The URI naming the same layer of the manifest ``digest`` (sha256:HEX): the
        tag stays as a name, the digest decides."""
        tag = f":{self.tag}" if self.tag else ""
        path = f"/{self.path}" if self.path else ""
        return f"oci://{self.registry}/{self.repository}{tag}@{digest}{path}"


def parse_oci(uri: str) -> Reference | None:
    """What ``uri`` names; None unless it is oci://REGISTRY/REPOSITORY with a tag or a
    digest, and an optional path of plain names."""
    match = _URI.fullmatch(uri)
    if match is None or not (match["tag"] or match["digest"]):
        return None
    reference = f"sha256:{match['digest']}" if match["digest"] else match["tag"]
    return Reference(match["registry"], match["repository"], reference, match["path"], match["tag"])


def layer_title(layer: dict[str, Any]) -> str | None:
    """The path a layer's annotations give it, or None (none, or two that disagree)."""
    annotations = layer.get("annotations")
    if not isinstance(annotations, dict):
        return None
    titles = {annotations.get(key) for key in TITLES} - {None}
    return titles.pop() if len(titles) == 1 else None


def artifact_manifest(data: bytes) -> dict[str, Any]:
    """The artifact manifest in a registry's answer; ValueError saying what it is instead
    (not JSON, an index of several platforms, no layers)."""
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError):
        manifest = None
    if not isinstance(manifest, dict):
        raise ValueError("the registry's manifest is not JSON")
    if "manifests" in manifest:
        raise ValueError(
            "the reference is an index (several platforms); name one artifact manifest by "
            "its digest"
        )
    if not isinstance(manifest.get("layers"), list):
        raise ValueError("the registry's manifest has no layers")
    return manifest


def titled(manifest: dict[str, Any], path: str) -> list[dict[str, Any]]:
    """The layers of ``manifest`` titled ``path`` (exactly one names a file)."""
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        return []
    return [layer for layer in layers if isinstance(layer, dict) and layer_title(layer) == path]


def docker_login(config: str, registry: str) -> tuple[str, str] | None:
    """The user and password a docker config (``.dockerconfigjson``, ~/.docker/config.json)
    holds for ``registry``: its ``auths`` entry whose key, without scheme and path, is the
    registry (``auth``: base64 of USER:PASSWORD, or ``username`` and ``password``); None
    when there is none. ValueError when ``config`` is not a docker config."""
    try:
        auths = json.loads(config).get("auths", {})
    except (ValueError, AttributeError, RecursionError):
        raise ValueError("not a docker config") from None
    if not isinstance(auths, dict):
        raise ValueError("not a docker config")
    for key, entry in auths.items():
        host = key.split("://", 1)[-1].split("/", 1)[0].lower()
        if host == registry.lower() and isinstance(entry, dict):
            return _login(entry)
    return None


def _login(entry: dict[str, Any]) -> tuple[str, str] | None:
    user, password = entry.get("username"), entry.get("password")
    if isinstance(entry.get("auth"), str):
        try:
            decoded = base64.b64decode(entry["auth"], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError("not a docker config") from None
        user, _, password = decoded.partition(":")
    if not isinstance(user, str) or not isinstance(password, str) or not user:
        return None
    return user, password


def basic(login: tuple[str, str]) -> str:
    """The ``Authorization`` value of a login."""
    return "Basic " + base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode("ascii")
