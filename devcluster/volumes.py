"""The files of a pod's ConfigMap, Secret, downward API and projected volumes."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from devcluster.podenv import ConfigError, Lookup, field_value
from devcluster.projection import Payload

JSON = dict[str, Any]
TokenSource = Callable[[str | None, int], str]  # (audience, expirationSeconds) -> token
PROJECTED_TYPES = ("configMap", "secret", "downwardAPI", "projected")
DEFAULT_MODE = 0o644


def _object_files(kind: str, obj: JSON | None, ref: JSON, name: str, mode: int) -> Payload:
    optional = bool(ref.get("optional"))
    if obj is None:
        if optional:
            return {}
        raise ConfigError(f"{kind} {name!r} not found (volume source; create it or set optional)")
    data: dict[str, bytes] = {}
    if kind == "secret":
        data = {k: base64.b64decode(v) for k, v in obj.get("data", {}).items()}
    else:
        data = {k: str(v).encode() for k, v in obj.get("data", {}).items()}
        data |= {k: base64.b64decode(v) for k, v in obj.get("binaryData", {}).items()}
    items = ref.get("items")
    if not items:
        return {key: (value, mode) for key, value in data.items()}
    out: Payload = {}
    for item in items:
        if item["key"] not in data:
            if optional:
                continue
            raise ConfigError(f"{kind} {name!r} has no key {item['key']!r} (volume items)")
        out[item["path"]] = (data[item["key"]], int(item.get("mode", mode)))
    return out


def _downward_files(items: list[JSON], pod: JSON, pod_ip: str, host_ip: str, mode: int) -> Payload:
    out: Payload = {}
    for item in items:
        if "fieldRef" not in item:
            raise ConfigError(f"downwardAPI item {item['path']!r}: only fieldRef is supported")
        value = field_value(pod, item["fieldRef"]["fieldPath"], pod_ip, host_ip)
        out[item["path"]] = (value.encode(), int(item.get("mode", mode)))
    return out


def volume_payload(
    volume: JSON,
    *,
    pod: JSON,
    pod_ip: str,
    host_ip: str,
    lookup: Lookup,
    token: TokenSource,
) -> Payload | None:
    """The files of `volume`, or None when it is not a projected kind (emptyDir, ...)."""
    if "configMap" in volume:
        ref = volume["configMap"]
        mode = int(ref.get("defaultMode", DEFAULT_MODE))
        return _object_files("configMap", lookup("configmaps", ref["name"]), ref, ref["name"], mode)
    if "secret" in volume:
        ref = volume["secret"]
        mode = int(ref.get("defaultMode", DEFAULT_MODE))
        name = ref["secretName"]
        return _object_files("secret", lookup("secrets", name), ref, name, mode)
    if "downwardAPI" in volume:
        ref = volume["downwardAPI"]
        mode = int(ref.get("defaultMode", DEFAULT_MODE))
        return _downward_files(ref.get("items", []), pod, pod_ip, host_ip, mode)
    if "projected" in volume:
        ref = volume["projected"]
        mode = int(ref.get("defaultMode", DEFAULT_MODE))
        out: Payload = {}
        for source in ref.get("sources", []):
            out |= _projected_source(source, pod, pod_ip, host_ip, lookup, token, mode)
        return out
    return None


def _projected_source(
    source: JSON,
    pod: JSON,
    pod_ip: str,
    host_ip: str,
    lookup: Lookup,
    token: TokenSource,
    mode: int,
) -> Payload:
    if "configMap" in source:
        ref = source["configMap"]
        return _object_files("configMap", lookup("configmaps", ref["name"]), ref, ref["name"], mode)
    if "secret" in source:
        ref = source["secret"]
        return _object_files("secret", lookup("secrets", ref["name"]), ref, ref["name"], mode)
    if "downwardAPI" in source:
        return _downward_files(source["downwardAPI"].get("items", []), pod, pod_ip, host_ip, mode)
    if "serviceAccountToken" in source:
        ref = source["serviceAccountToken"]
        value = token(ref.get("audience"), int(ref.get("expirationSeconds", 3607)))
        return {ref["path"]: (value.encode(), mode)}
    raise ConfigError(f"projected source {sorted(source)} is not supported by the local kubelet")
