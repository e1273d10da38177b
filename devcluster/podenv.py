"""A container's environment, command line and paths, as the kubelet would build them.

Environment: `value`, `valueFrom` (fieldRef, resourceFieldRef, configMapKeyRef,
secretKeyRef) and `envFrom`, with `$(VAR)` expansion in values, command and args.

Paths: processes cannot see a container's `/etc/...`, so every env value, command or
arg word that starts with a volumeMount's `mountPath` (or is `--flag=<mountPath>...`)
is rewritten to the pod's local folder for that volume.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

JSON = dict[str, Any]
Lookup = Callable[[str, str], JSON | None]  # (kind: configmaps|secrets, name) -> object


class ConfigError(Exception):
    """The container's config cannot be built yet (kubelet: CreateContainerConfigError)."""


def field_value(pod: JSON, path: str, pod_ip: str, host_ip: str) -> str:
    """A downward-API fieldRef value."""
    meta, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return str(simple[path])
    if m := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
        return str(meta.get(m.group(1), {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = sorted(meta.get(path.split(".")[1], {}).items())
        return "\n".join(f'{k}="{v}"' for k, v in items)
    raise ConfigError(f"fieldRef {path!r} is not supported by the local kubelet")


_SUFFIX = {"m": Decimal("0.001"), "k": Decimal(10**3), "M": Decimal(10**6)}
_SUFFIX |= {"G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15)}
_SUFFIX |= {"Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30)}
_SUFFIX |= {"Ti": Decimal(2**40), "Pi": Decimal(2**50)}


def quantity(text: str) -> Decimal:
    """Parse a Kubernetes quantity such as `500m`, `2Gi`, `1e3`."""
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?\d+)?)([a-zA-Z]*)", str(text).strip())
    if not m or (m.group(2) and m.group(2) not in _SUFFIX):
        raise ConfigError(f"cannot parse quantity {text!r}")
    return Decimal(m.group(1)) * _SUFFIX.get(m.group(2), Decimal(1))


def resource_value(container: JSON, ref: JSON, allocatable: Mapping[str, str]) -> str:
    """A resourceFieldRef value: the limit (or request), else node allocatable."""
    kind, _, name = ref["resource"].partition(".")
    res = container.get("resources", {})
    raw = res.get(kind, {}).get(name) or allocatable.get(name)
    if raw is None:
        raise ConfigError(f"resourceFieldRef {ref['resource']!r} has no value")
    value = quantity(raw) / quantity(ref.get("divisor", "1"))
    return str(math.ceil(value))


def _key_ref(kind: str, ref: JSON, lookup: Lookup) -> str | None:
    obj = lookup(kind, ref["name"])
    optional = bool(ref.get("optional"))
    if obj is None:
        if optional:
            return None
        raise ConfigError(f"{kind[:-1]} {ref['name']!r} not found")
    if kind == "secrets" and ref["key"] in obj.get("data", {}):
        return base64.b64decode(obj["data"][ref["key"]]).decode()
    if kind == "configmaps" and ref["key"] in obj.get("data", {}):
        return str(obj["data"][ref["key"]])
    if optional:
        return None
    raise ConfigError(f"{kind[:-1]} {ref['name']!r} has no key {ref['key']!r}")


def _env_from(source: JSON, lookup: Lookup) -> dict[str, str]:
    prefix = source.get("prefix", "")
    kind, ref = (
        ("configmaps", source["configMapRef"])
        if "configMapRef" in source
        else ("secrets", source["secretRef"])
    )
    obj = lookup(kind, ref["name"])
    if obj is None:
        if ref.get("optional"):
            return {}
        raise ConfigError(f"{kind[:-1]} {ref['name']!r} (envFrom) not found")
    data = obj.get("data", {})
    if kind == "secrets":
        return {prefix + k: base64.b64decode(v).decode() for k, v in data.items()}
    return {prefix + k: str(v) for k, v in data.items()}


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined names are replaced, `$$` escapes `$`."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, value)


def container_env(
    pod: JSON,
    container: JSON,
    *,
    pod_ip: str,
    host_ip: str,
    lookup: Lookup,
    allocatable: Mapping[str, str],
) -> dict[str, str]:
    """The environment the pod spec gives `container` (without the process basics)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(_env_from(source, lookup))
    for var in container.get("env", []):
        value: str | None
        if "valueFrom" not in var:
            value = expand(var.get("value", ""), env)
        else:
            src = var["valueFrom"]
            if "fieldRef" in src:
                value = field_value(pod, src["fieldRef"]["fieldPath"], pod_ip, host_ip)
            elif "resourceFieldRef" in src:
                value = resource_value(container, src["resourceFieldRef"], allocatable)
            elif "configMapKeyRef" in src:
                value = _key_ref("configmaps", src["configMapKeyRef"], lookup)
            elif "secretKeyRef" in src:
                value = _key_ref("secrets", src["secretKeyRef"], lookup)
            else:
                raise ConfigError(f"env {var['name']!r}: unsupported valueFrom {sorted(src)}")
        if value is not None:
            env[var["name"]] = value
    return env


class MountMap:
    """Maps container paths under volume mounts to local folders."""

    def __init__(self, mounts: Mapping[str, str]) -> None:
        # Longest mount path first, so /etc/a/b wins over /etc/a.
        self._mounts = sorted(
            ((mp.rstrip("/") or "/", local) for mp, local in mounts.items()),
            key=lambda item: -len(item[0]),
        )

    def path(self, value: str) -> str | None:
        for mount, local in self._mounts:
            if value == mount:
                return local
            if value.startswith(mount + "/"):
                return local + value[len(mount) :]
        return None

    def rewrite(self, value: str) -> str:
        """`value` with a leading mount path (or `--flag=<mount path>`) made local."""
        if (local := self.path(value)) is not None:
            return local
        flag, eq, rest = value.partition("=")
        if eq and flag.startswith("-") and (local := self.path(rest)) is not None:
            return f"{flag}={local}"
        return value
