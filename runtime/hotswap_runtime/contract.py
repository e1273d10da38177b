"""Wire formats shared by the operator and the runtime.

Two documents cross the boundary between them:

* ``ModelConfig``: the ``model.json`` key of the ``<name>-model`` ConfigMap. The
  operator writes it; every runtime pod reads it (mounted file and API watch) and
  reconciles toward the revision it names for that pod.
* ``PodReport``: the entry a runtime pod writes at ``status.pods.<pod-name>`` of its
  ModelDeployment with a JSON merge patch on the status subresource.

This module imports only the standard library and pydantic, so the operator image
(which never installs torch) can use it.
"""

from __future__ import annotations

import enum
import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

API_GROUP = "hotswap.dev"
API_VERSION = "v1alpha1"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"

CONFIG_KEY = "model.json"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
URI_PATTERN = r"^(file|https?|s3)://.+"
ARCHITECTURE_PATTERN = r"^(torchvision/[A-Za-z0-9_]+|python/[A-Za-z0-9_.]+:[A-Za-z0-9_]+)$"


def configmap_name(deployment: str) -> str:
    """Name of the ConfigMap that carries ``model.json`` for a ModelDeployment."""
    return f"{deployment}-model"


class _Wire(BaseModel):
    """Base for wire documents: camelCase on the wire, strict about unknown keys."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ModelSpec(_Wire):
    """How to build the network that a checkpoint's state dict loads into."""

    architecture: str = Field(pattern=ARCHITECTURE_PATTERN)
    args: dict[str, Any] = Field(default_factory=dict)
    input_shape: tuple[int, ...] = Field(alias="inputShape", min_length=1)


class Checkpoint(_Wire):
    """Where a checkpoint lives and the sha256 it must have."""

    uri: str = Field(pattern=URI_PATTERN)
    sha256: str = Field(pattern=SHA256_PATTERN)
    secret_ref: str | None = Field(default=None, alias="secretRef")


class Validation(_Wire):
    """Expected outputs for a probe input; a candidate that disagrees fails."""

    input: Checkpoint
    expected: Checkpoint
    tolerance: float = Field(default=1e-4, ge=0)


class Revision(_Wire):
    """One numbered revision: a model and the checkpoint that fills it."""

    revision: int = Field(ge=1)
    model: ModelSpec
    checkpoint: Checkpoint
    validation: Validation | None = None

    @property
    def key(self) -> tuple[int, str]:
        return (self.revision, self.checkpoint.sha256)


class ModelConfig(_Wire):
    """The ``model.json`` payload: what each pod of a ModelDeployment should serve.

    Pods listed in ``candidate_pods`` serve ``candidate``; every other pod serves
    ``stable``. ``generation`` increases with every write, so a reader can tell a newer
    document from an older one whichever path (file or API) delivered it.
    """

    name: str
    generation: int = Field(ge=0)
    stable: Revision
    candidate: Revision | None = None
    candidate_pods: tuple[str, ...] = Field(default=(), alias="candidatePods")

    def revision_for(self, pod: str) -> Revision:
        """The revision meant for ``pod``."""
        if self.candidate is not None and pod in self.candidate_pods:
            return self.candidate
        return self.stable

    def dumps(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)


class ConfigError(ValueError):
    """``model.json`` could not be read; the message says what is wrong with it."""


def parse_config(text: str) -> ModelConfig:
    """Parse ``model.json``, raising ConfigError with a readable reason."""
    try:
        return ModelConfig.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid {CONFIG_KEY}: {problems}") from None


class PodState(str, enum.Enum):  # noqa: UP042 (str() of members stays as it was)
    """Where a pod stands with the revision meant for it."""

    PENDING = "Pending"  # started, no model loaded yet
    LOADING = "Loading"  # fetching, verifying or validating the target revision
    SERVING = "Serving"  # serving the target revision
    FAILED = "Failed"  # the target revision failed; the pod serves its previous one


class PodReport(_Wire):
    """``status.pods.<pod-name>``: what one pod serves and how its last swap went."""

    revision: int | None = None  # the revision answering requests now
    sha256: str | None = None
    state: PodState
    target_revision: int | None = Field(default=None, alias="targetRevision")
    target_sha256: str | None = Field(default=None, alias="targetSha256")
    loaded_at: str | None = Field(default=None, alias="loadedAt")
    swap_seconds: dict[str, float] = Field(default_factory=dict, alias="swapSeconds")
    device: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    message: str = ""
    config_generation: int | None = Field(default=None, alias="configGeneration")

    def to_status(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def short_sha(sha256: str) -> str:
    return sha256[:12]


def is_sha256(value: str) -> bool:
    return re.fullmatch(SHA256_PATTERN, value) is not None
