"""The ModelDeployment spec as typed values, validated the way the CRD schema does.

The CRD's openAPIV3Schema refuses malformed objects at the API server; this module
reads an admitted spec into typed values and raises SpecError, naming the field and
the fix, for what a schema cannot express.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hotswap_contract.wire import (
    MAX_BATCH_SIZE,
    MAX_ORIGIN_CONCURRENCY,
    MAX_QUEUE_DELAY_US,
    SHA256_PATTERN,
    URI_PATTERN,
    Analysis,
    Checkpoint,
    ModelSpec,
    Validation,
)
from hotswap_operator.errors import PermanentError

Strategy = Literal["AllAtOnce", "Canary"]
Device = Literal["auto", "cuda", "cpu"]


class SpecError(PermanentError, ValueError):
    """The spec can never work as written; the message names the field and the fix."""

    reason = "InvalidSpec"


class _Spec(BaseModel):
    # Unknown fields are pruned by the API server; ignoring them here keeps an older
    # operator working against a newer CRD.
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class SecretRef(_Spec):
    name: str = Field(min_length=1)


class CheckpointSpec(_Spec):
    uri: str = Field(pattern=URI_PATTERN)
    sha256: str = Field(pattern=SHA256_PATTERN)
    secret_ref: SecretRef | None = Field(default=None, alias="secretRef")

    def to_contract(self) -> Checkpoint:
        secret = self.secret_ref.name if self.secret_ref else None
        return Checkpoint(uri=self.uri, sha256=self.sha256, secretRef=secret)


MAX_STEP_COUNT = 10000  # spec.replicas' maximum too
STEP_PERCENT = re.compile(r"^([0-9]{1,3})%$")


def step_value(step: int | str) -> tuple[int, int]:
    """(0, count) or (1, percent) of one canary step; ValueError when out of range. The
    CRD's CEL rules say the same; this catches specs written under an older CRD."""
    if isinstance(step, int):
        if not 1 <= step <= MAX_STEP_COUNT:
            raise ValueError(f"step {step}: a pod count is 1 to {MAX_STEP_COUNT}")
        return (0, step)
    match = STEP_PERCENT.match(step)
    if match is None or not 1 <= int(match[1]) <= 100:
        raise ValueError(f'step "{step}": a percentage is "1%" to "100%"')
    return (1, int(match[1]))


Metric = Literal["errorRate", "p99Latency", "shadowAgreement"]
# the thresholds each metric takes (at least one of them)
THRESHOLDS: dict[str, tuple[str, ...]] = {
    "errorRate": ("maxIncrease", "max"),
    "p99Latency": ("maxRatio", "maxMilliseconds"),
    "shadowAgreement": ("min",),
}
MAX_BAKE_SECONDS = 86400


class CheckSpec(_Spec):
    """One check of a Canary step's bake window (checks.py evaluates it)."""

    metric: Metric
    max_increase: float | None = Field(default=None, ge=0, le=1, alias="maxIncrease")
    max: float | None = Field(default=None, ge=0, le=1)
    max_ratio: float | None = Field(default=None, ge=1, le=100, alias="maxRatio")
    max_milliseconds: float | None = Field(
        default=None, gt=0, le=3_600_000, alias="maxMilliseconds"
    )
    min: float | None = Field(default=None, ge=0, le=1)
    min_requests: int = Field(default=20, ge=1, le=1_000_000, alias="minRequests")

    @model_validator(mode="after")
    def _thresholds(self) -> CheckSpec:
        allowed = THRESHOLDS[self.metric]
        given = {
            k
            for k in ("maxIncrease", "max", "maxRatio", "maxMilliseconds", "min")
            if getattr(self, _FIELD[k]) is not None
        }
        if not given or not given <= set(allowed):
            raise ValueError(
                f"check {self.metric} takes {' and/or '.join(allowed)}"
                f" (given: {', '.join(sorted(given)) or 'none'}); set one of them"
            )
        return self


_FIELD = {
    "maxIncrease": "max_increase",
    "max": "max",
    "maxRatio": "max_ratio",
    "maxMilliseconds": "max_milliseconds",
    "min": "min",
}


class RolloutSpec(_Spec):
    strategy: Strategy = "AllAtOnce"
    steps: tuple[int | str, ...] = Field(default=(), max_length=10)
    step_timeout_seconds: int = Field(default=300, ge=1, alias="stepTimeoutSeconds")
    auto_rollback: bool = Field(default=True, alias="autoRollback")
    paused: bool = False
    bake_seconds: int = Field(default=0, ge=0, le=MAX_BAKE_SECONDS, alias="bakeSeconds")
    checks: tuple[CheckSpec, ...] = Field(default=(), max_length=8)

    @model_validator(mode="after")
    def _bake_for_checks(self) -> RolloutSpec:
        if self.checks and self.bake_seconds < 1:
            raise ValueError(
                "checks need a bake window: set bakeSeconds (e.g. 60), or remove checks"
            )
        return self

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: tuple[int | str, ...]) -> tuple[int | str, ...]:
        values = [step_value(s) for s in steps]
        if any(b <= a for a, b in itertools.pairwise(values)):
            raise ValueError(
                'steps must strictly increase, pod counts before percentages, e.g. [1, 2, "50%",'
                ' "100%"]; remove repeated or decreasing steps'
            )
        return steps


LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
OPERATOR_PREFIX = "hotswap.dev/"
# Labels the operator sets on runtime pods (resources.labels) or the Deployment
# controller does; the Service and the Deployment select pods by them.
RESERVED_LABELS = frozenset(
    {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/managed-by",
        "pod-template-hash",
    }
)
MAX_KEYS = 32
MAX_ANNOTATION_VALUE = 4096


def check_metadata(values: Mapping[str, str], what: str, *, labels: bool) -> dict[str, str]:
    """`values` when every key (and, for labels, value) is valid and none is the
    operator's; ValueError naming the first that is not (the CRD's CEL rules say the
    same)."""
    if len(values) > MAX_KEYS:
        raise ValueError(f"{what}: at most {MAX_KEYS} keys")
    for key, value in values.items():
        if len(key) > 317 or not LABEL_KEY.match(key):
            raise ValueError(f"{what}: {key[:80]!r} is not a valid key ([prefix/]name)")
        if key.startswith(OPERATOR_PREFIX) or (labels and key in RESERVED_LABELS):
            raise ValueError(f"{what}: {key} is the operator's; choose another key")
        if labels and not LABEL_VALUE.match(value):
            raise ValueError(f"{what}.{key}: {value[:80]!r} is not a valid label value")
        if len(value) > MAX_ANNOTATION_VALUE:
            raise ValueError(f"{what}.{key}: at most {MAX_ANNOTATION_VALUE} characters")
    return dict(values)


class PodMetadata(_Spec):
    """Labels and annotations added to the runtime pods."""

    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return check_metadata(value, "podMetadata.labels", labels=True)

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, value: dict[str, str]) -> dict[str, str]:
        return check_metadata(value, "podMetadata.annotations", labels=False)


class ServiceAccountSpec(_Spec):
    """The runtime pods' ServiceAccount: its annotations (workload identity)."""

    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, value: dict[str, str]) -> dict[str, str]:
        return check_metadata(value, "serviceAccount.annotations", labels=False)


class DisruptionBudget(_Spec):
    """An optional PodDisruptionBudget for the runtime pods."""

    enabled: bool = False
    min_available: int | str | None = Field(default=None, alias="minAvailable")
    max_unavailable: int | str | None = Field(default=None, alias="maxUnavailable")

    @model_validator(mode="after")
    def _one_bound(self) -> DisruptionBudget:
        if self.min_available is not None and self.max_unavailable is not None:
            raise ValueError("podDisruptionBudget sets both minAvailable and maxUnavailable")
        for bound in (self.min_available, self.max_unavailable):
            if isinstance(bound, str) and not STEP_PERCENT.match(bound):
                raise ValueError(f'podDisruptionBudget: "{bound}" is neither a count nor "N%"')
            if isinstance(bound, int) and bound < 0:
                raise ValueError(f"podDisruptionBudget: {bound} is negative")
        return self


class EnvVar(_Spec):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    value: str = ""


class BatchingSpec(_Spec):
    """Dynamic batching, as Triton offers it: requests queued together run as one batch
    (on one revision) of at most ``max_batch_size`` samples, a batch waiting at most
    ``max_queue_delay_microseconds`` for more."""

    max_batch_size: int = Field(default=8, ge=1, le=MAX_BATCH_SIZE, alias="maxBatchSize")
    max_queue_delay_microseconds: int = Field(
        default=1000, ge=0, le=MAX_QUEUE_DELAY_US, alias="maxQueueDelayMicroseconds"
    )


GPU_RESOURCE = "nvidia.com/gpu"
MIG_PREFIX = "nvidia.com/mig-"  # a MIG slice, e.g. nvidia.com/mig-1g.10gb


def is_gpu_resource(name: str) -> bool:
    """A whole NVIDIA GPU or a MIG slice of one (the device plugin's resource names)."""
    return name == GPU_RESOURCE or name.startswith(MIG_PREFIX)


class RuntimeSpec(_Spec):
    """Per-deployment overrides of the runtime defaults the chart gives the operator."""

    image: str | None = None
    image_pull_policy: str | None = Field(default=None, alias="imagePullPolicy")
    device: Device = "auto"
    cache_max_bytes: int | None = Field(default=None, ge=0, alias="cacheMaxBytes")
    resources: dict[str, dict[str, str | int]] | None = None
    node_selector: dict[str, str] | None = Field(default=None, alias="nodeSelector")
    tolerations: tuple[dict[str, Any], ...] | None = None
    runtime_class_name: str | None = Field(default=None, alias="runtimeClassName")
    env: tuple[EnvVar, ...] = ()
    batching: BatchingSpec | None = None
    # placement and identity (docs/architecture.md, "Runtime pod settings")
    image_pull_secrets: tuple[SecretRef, ...] | None = Field(
        default=None, alias="imagePullSecrets", max_length=16
    )
    priority_class_name: str | None = Field(default=None, alias="priorityClassName")
    affinity: dict[str, Any] | None = None
    topology_spread_constraints: tuple[dict[str, Any], ...] | None = Field(
        default=None, alias="topologySpreadConstraints", max_length=8
    )
    pod_metadata: PodMetadata = Field(default=PodMetadata(), alias="podMetadata")
    service_account: ServiceAccountSpec = Field(
        default=ServiceAccountSpec(), alias="serviceAccount"
    )
    pod_disruption_budget: DisruptionBudget | None = Field(
        default=None, alias="podDisruptionBudget"
    )

    @model_validator(mode="after")
    def _no_gpu_on_cpu(self) -> RuntimeSpec:
        if self.device != "cpu" or not self.resources:
            return self
        gpus = sorted(
            {n for values in self.resources.values() for n in values if is_gpu_resource(n)}
        )
        if gpus:
            raise ValueError(
                f"device is cpu but resources asks for {', '.join(gpus)}; remove the GPU "
                "from resources, or set device to auto or cuda"
            )
        return self


class DistributionSpec(_Spec):
    """How runtime pods get checkpoint files: from each other (peers) or each from the
    store. ``origin_concurrency`` None: the chart's default (config.DistributionDefaults)."""

    peers: bool = True
    origin_concurrency: int | None = Field(
        default=None, ge=1, le=MAX_ORIGIN_CONCURRENCY, alias="originConcurrency"
    )


class DeploymentSpec(_Spec):
    replicas: int = Field(default=1, ge=0)
    # a rollout without progress this long: Progressing False, ProgressDeadlineExceeded
    progress_deadline_seconds: int = Field(
        default=600, ge=10, le=86400, alias="progressDeadlineSeconds"
    )
    model: ModelSpec
    checkpoint: CheckpointSpec
    validation: Validation | None = None
    analysis: Analysis | None = None  # how pods judge a new revision; never in the digest
    rollout: RolloutSpec = RolloutSpec()
    runtime: RuntimeSpec = RuntimeSpec()
    distribution: DistributionSpec = DistributionSpec()

    def content_digest(self) -> str:
        """A short digest of what a revision is made of: model, checkpoint, validation.

        Two specs with the same digest need no new revision; anything else (replicas,
        rollout, runtime) never bumps the revision.
        """
        content = {
            "model": self.model.model_dump(mode="json", by_alias=True),
            "checkpoint": self.checkpoint.to_contract().model_dump(mode="json", by_alias=True),
            "validation": (
                self.validation.model_dump(mode="json", by_alias=True) if self.validation else None
            ),
        }
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def parse_spec(spec: Mapping[str, Any], *, name: str = "") -> DeploymentSpec:
    """Read a ModelDeployment spec, raising SpecError that names each bad field."""
    try:
        return DeploymentSpec.model_validate(dict(spec))
    except ValidationError as exc:
        problems = "; ".join(
            f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        where = f"ModelDeployment {name}: " if name else ""
        raise SpecError(f"{where}{problems}; fix the spec and apply it again") from None
