"""Operator settings from the environment (the chart sets them from its values)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_RUNTIME_IMAGE = "ghcr.io/hotswap-dev/hotswap-runtime:0.1.0"
GPU_RESOURCE = "nvidia.com/gpu"


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


def _gpu_limits(count: int) -> dict[str, str | int]:
    return {GPU_RESOURCE: count}


class GpuDefaults(_Settings):
    """Scheduling for GPU runtime pods; skipped for a ModelDeployment with device cpu."""

    enabled: bool = True
    limits: dict[str, str | int] = Field(default_factory=lambda: _gpu_limits(1))
    tolerations: tuple[dict[str, Any], ...] = (
        {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
    )
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    runtime_class_name: str | None = Field(default=None, alias="runtimeClassName")


class RuntimeDefaults(_Settings):
    """What runtime pods get unless a ModelDeployment's spec.runtime says otherwise."""

    image: str = DEFAULT_RUNTIME_IMAGE
    image_pull_policy: str = Field(default="IfNotPresent", alias="imagePullPolicy")
    resources: dict[str, dict[str, str | int]] = Field(default_factory=dict)
    gpu: GpuDefaults = GpuDefaults()


class ConfigurationError(ValueError):
    """An operator setting is malformed; the message names the variable."""


def runtime_defaults(env: Mapping[str, str]) -> RuntimeDefaults:
    """Parse HOTSWAP_RUNTIME_DEFAULTS (JSON), or the built-in defaults when unset."""
    raw = env.get("HOTSWAP_RUNTIME_DEFAULTS", "").strip()
    if not raw:
        return RuntimeDefaults()
    try:
        return RuntimeDefaults.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise ConfigurationError(f"HOTSWAP_RUNTIME_DEFAULTS is not valid: {exc}") from None


def watched_namespaces(env: Mapping[str, str]) -> tuple[str, ...]:
    """HOTSWAP_NAMESPACES, comma separated; empty means every namespace."""
    raw = env.get("HOTSWAP_NAMESPACES", "")
    return tuple(ns.strip() for ns in raw.split(",") if ns.strip())


def liveness_endpoint(env: Mapping[str, str]) -> str:
    """Where kopf serves /healthz: the pod IP (downward API) or loopback."""
    explicit = env.get("HOTSWAP_LIVENESS_ENDPOINT", "").strip()
    if explicit:
        return explicit
    host = env.get("POD_IP", "").strip() or "127.0.0.1"
    if ":" in host:  # an IPv6 pod IP
        host = f"[{host}]"
    port = env.get("HOTSWAP_LIVENESS_PORT", "8081").strip()
    return f"http://{host}:{port}/healthz"


def from_environ() -> tuple[tuple[str, ...], RuntimeDefaults, str]:
    env = os.environ
    return watched_namespaces(env), runtime_defaults(env), liveness_endpoint(env)
