"""Operator settings from the environment (the chart sets them from its values)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hotswap_contract.policy import (
    DEFAULT_ARCHITECTURES,
    DEFAULT_FILE_ROOTS,
    PolicyError,
    check_architecture_entries,
    normalized_root,
    parse_networks,
)
from hotswap_contract.wire import (
    MAX_FORWARD_BATCH,
    MAX_ORIGIN_CONCURRENCY,
    MIN_FORWARD_MEMORY_BYTES,
)
from hotswap_operator.spec import (
    GPU_RESOURCE,
    DisruptionBudget,
    PodMetadata,
    SecretRef,
    ServiceAccountSpec,
)

DEFAULT_RUNTIME_IMAGE = "ghcr.io/hotswap-dev/hotswap-runtime:0.1.0"


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


# spec.runtime.env may set these (exact names, or prefixes ending in "*"); the runtime's
# interface variables, its limits and anything that changes what code runs
# (LD_PRELOAD, PYTHONPATH, ...) stay with the operator and the admin.
DEFAULT_RUNTIME_ENV = (
    "HOTSWAP_TORCH_THREADS",
    "HOTSWAP_LOG_LEVEL",
    "HOTSWAP_SWAP_MODE",
    "HOTSWAP_RESYNC_SECONDS",
    "HOTSWAP_API_WATCH",
    "HOTSWAP_FETCH_IDLE_SECONDS",
    "HOTSWAP_DRAIN_SECONDS",
    "HOTSWAP_MEMORY_FORMAT",
    "HOTSWAP_FREEZE",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "PYTORCH_CUDA_ALLOC_CONF",
)


class Policy(_Settings):
    """What ModelDeployments may name: the cluster admin's allowlists (policy.py)."""

    architectures: tuple[str, ...] = DEFAULT_ARCHITECTURES
    images: tuple[str, ...] = ()  # beside the chart's runtime image; "*" allows any
    file_roots: tuple[str, ...] = Field(default=DEFAULT_FILE_ROOTS, alias="fileRoots")
    fetch_networks: tuple[str, ...] = Field(default=(), alias="fetchAllowedNetworks")
    runtime_env: tuple[str, ...] = Field(default=DEFAULT_RUNTIME_ENV, alias="runtimeEnv")
    max_checkpoint_bytes: int | None = Field(default=None, ge=1, alias="maxCheckpointBytes")
    # forward passes (HOTSWAP_MAX_FORWARD_BATCH, HOTSWAP_FORWARD_MEMORY_BYTES); None: the
    # runtime's defaults
    max_forward_batch: int | None = Field(
        default=None, ge=1, le=MAX_FORWARD_BATCH, alias="maxForwardBatch"
    )
    forward_memory_bytes: int | None = Field(
        default=None, ge=MIN_FORWARD_MEMORY_BYTES, alias="forwardMemoryBytes"
    )

    @field_validator("architectures")
    @classmethod
    def _architectures(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_policy(check_architecture_entries, value))

    @field_validator("file_roots")
    @classmethod
    def _roots(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_policy(normalized_root, root) for root in value)

    @field_validator("fetch_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        _policy(parse_networks, value)
        return value


def _policy(check: Any, value: Any) -> Any:
    try:
        return check(value)
    except PolicyError as exc:  # pydantic reports ValueErrors with the field's name
        raise ValueError(str(exc)) from None


# A URL the chart's policy also pins in CEL: no whitespace, comma, quote or backslash.
PROXY_PATTERN = r"""^(|https?://[^\s,"'\\]+)$"""


class DistributionDefaults(_Settings):
    """The chart's distribution.* values: how many pods read the store when a
    ModelDeployment does not say, and the HTTP(S) proxy the runtime downloads through
    (e.g. a Dragonfly dfdaemon on every node; "": none)."""

    origin_concurrency: int = Field(
        default=2, ge=1, le=MAX_ORIGIN_CONCURRENCY, alias="originConcurrency"
    )
    proxy: str = Field(default="", max_length=2048, pattern=PROXY_PATTERN)


# Spread each ModelDeployment's pods over nodes where the cluster allows (never
# leaving a pod Pending for it); resources.py selects the ModelDeployment's own pods.
DEFAULT_SPREAD: tuple[dict[str, Any], ...] = (
    {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"},
)


class RuntimeDefaults(_Settings):
    """What runtime pods get unless a ModelDeployment's spec.runtime says otherwise
    (merge rules: resources.scheduling and docs/architecture.md)."""

    image: str = DEFAULT_RUNTIME_IMAGE
    image_pull_policy: str = Field(default="IfNotPresent", alias="imagePullPolicy")
    resources: dict[str, dict[str, str | int]] = Field(default_factory=dict)
    gpu: GpuDefaults = GpuDefaults()
    # A read-only volume mounted at MODELS_DIR in every runtime pod (a volume source,
    # e.g. {"persistentVolumeClaim": {"claimName": "models", "readOnly": true}}).
    model_volume: dict[str, Any] | None = Field(default=None, alias="modelVolume")
    policy: Policy = Policy()
    image_pull_secrets: tuple[SecretRef, ...] = Field(
        default=(), alias="imagePullSecrets", max_length=16
    )
    priority_class_name: str | None = Field(default=None, alias="priorityClassName")
    affinity: dict[str, Any] | None = None
    topology_spread_constraints: tuple[dict[str, Any], ...] = Field(
        default=DEFAULT_SPREAD, alias="topologySpreadConstraints", max_length=8
    )
    pod_metadata: PodMetadata = Field(default=PodMetadata(), alias="podMetadata")
    service_account: ServiceAccountSpec = Field(
        default=ServiceAccountSpec(), alias="serviceAccount"
    )
    pod_disruption_budget: DisruptionBudget = Field(
        default=DisruptionBudget(), alias="podDisruptionBudget"
    )
    distribution: DistributionDefaults = DistributionDefaults()


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


class OperatorSettings(_Settings):
    """How the operator runs (the chart's values, through the environment)."""

    sync_workers: int = Field(default=4, ge=1)  # ModelDeployments synced at once
    # pod and report changes sync a ModelDeployment at most this often (0: every change)
    report_batch_seconds: float = Field(default=0.25, ge=0, le=10)
    # every ModelDeployment is synced again this often from the caches (0: never), so a
    # trigger lost anywhere (a watch, the API server under load) is late, not lost
    resync_seconds: float = Field(default=60.0, ge=0, le=86400)
    lease_namespace: str = "default"  # where the leader Lease lives (the operator's own)
    lease_name: str = "hotswap-operator"
    lease_seconds: float = Field(default=8.0, gt=0)
    renew_deadline_seconds: float = Field(default=5.0, gt=0)
    retry_seconds: float = Field(default=1.0, gt=0)
    # a replica whose watches have failed this long (no success since) is blind: it
    # gives up or never takes the Lease, and its liveness endpoint fails (watchhealth.py)
    watch_failure_seconds: float = Field(default=30.0, gt=0, le=3600)
    metrics_port: int = Field(default=8082, ge=0, le=65535)  # 0: no /metrics
    metrics_address: str = "127.0.0.1"


_OPERATOR_ENV = {
    "HOTSWAP_SYNC_WORKERS": "sync_workers",
    "HOTSWAP_REPORT_BATCH_SECONDS": "report_batch_seconds",
    "HOTSWAP_RESYNC_SECONDS": "resync_seconds",
    "POD_NAMESPACE": "lease_namespace",
    "HOTSWAP_LEADER_LEASE": "lease_name",
    "HOTSWAP_LEASE_SECONDS": "lease_seconds",
    "HOTSWAP_RENEW_DEADLINE_SECONDS": "renew_deadline_seconds",
    "HOTSWAP_LEASE_RETRY_SECONDS": "retry_seconds",
    "HOTSWAP_WATCH_FAILURE_SECONDS": "watch_failure_seconds",
    "HOTSWAP_METRICS_PORT": "metrics_port",
    "POD_IP": "metrics_address",
}


def operator_settings(env: Mapping[str, str]) -> OperatorSettings:
    """OperatorSettings from the variables in `_OPERATOR_ENV` (unset: the defaults)."""
    values = {f: env[v].strip() for v, f in _OPERATOR_ENV.items() if env.get(v, "").strip()}
    try:
        settings = OperatorSettings.model_validate(values)
    except ValidationError as exc:
        raise ConfigurationError(f"operator settings are not valid: {exc}") from None
    if settings.renew_deadline_seconds >= settings.lease_seconds:
        raise ConfigurationError(
            "HOTSWAP_RENEW_DEADLINE_SECONDS must be below HOTSWAP_LEASE_SECONDS: a leader "
            "that cannot renew must stop before another replica may take the Lease"
        )
    return settings


def from_environ() -> tuple[tuple[str, ...], RuntimeDefaults, str]:
    env = os.environ
    operator_settings(env)  # fail fast on those too
    return watched_namespaces(env), runtime_defaults(env), liveness_endpoint(env)
