"""The ModelDeployment spec as typed values, validated the way the CRD schema does.

The CRD's openAPIV3Schema refuses malformed objects at the API server; this module
reads an admitted spec into typed values and raises SpecError, naming the field and
the fix, for what a schema cannot express.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

from hotswap_runtime.contract import (
    MAX_BATCH_SIZE,
    MAX_QUEUE_DELAY_US,
    SHA256_PATTERN,
    URI_PATTERN,
    Checkpoint,
    ModelSpec,
    Validation,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Strategy = Literal["AllAtOnce", "Canary"]
Device = Literal["auto", "cuda", "cpu"]


class SpecError(ValueError):
    """The spec can never work as written; the message names the field and the fix."""


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


class RolloutSpec(_Spec):
    strategy: Strategy = "AllAtOnce"
    steps: tuple[int | str, ...] = ()
    step_timeout_seconds: int = Field(default=300, ge=1, alias="stepTimeoutSeconds")
    auto_rollback: bool = Field(default=True, alias="autoRollback")
    paused: bool = False


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


class DeploymentSpec(_Spec):
    replicas: int = Field(default=1, ge=0)
    model: ModelSpec
    checkpoint: CheckpointSpec
    validation: Validation | None = None
    rollout: RolloutSpec = RolloutSpec()
    runtime: RuntimeSpec = RuntimeSpec()

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
