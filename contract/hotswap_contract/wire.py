"""Wire formats shared by the operator and the runtime.

Two documents cross the boundary between them:

* ``ModelConfig``: the ``model.json`` key of the ``<name>-model`` ConfigMap. The
  operator writes it; every runtime pod reads it (mounted file and API watch) and
  reconciles toward the revision it names for that pod.
* ``PodReport``: what a runtime pod reports, the ``status`` of its own ``ModelReplica``
  object (named after the pod, owned by the pod, labelled with the ModelDeployment).

This module imports only the standard library, pydantic and schemes.py, so the operator
image (which never installs torch) can use it.
"""

from __future__ import annotations

import enum
import json
import math
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
)

from hotswap_contract.schemes import SCHEMES

API_GROUP = "hotswap.dev"
API_VERSION = "v1alpha1"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
REPLICA_KIND = "ModelReplica"  # one per runtime pod: its report (see PodReport)
REPLICA_PLURAL = "modelreplicas"
DEPLOYMENT_LABEL = f"{API_GROUP}/model-deployment"  # pods and ModelReplicas: whose they are

CONFIG_KEY = "model.json"
HTTP_PORT = 8080  # OIP v2 REST, health probes and /metrics
GRPC_PORT = 8081  # the KServe v2 GRPCInferenceService
MAX_BATCH_SIZE = 1024  # spec.runtime.batching.maxBatchSize bound (CRD and runtime)
MAX_QUEUE_DELAY_US = 1_000_000  # spec.runtime.batching.maxQueueDelayMicroseconds bound
SHA256_PATTERN = r"^[0-9a-f]{64}$"
URI_PATTERN = rf"^({'|'.join(SCHEMES)})://.+"  # schemes.py
ARCHITECTURE_PATTERN = r"^(torchvision/[A-Za-z0-9_]+|python/[A-Za-z0-9_.]+:[A-Za-z0-9_]+)$"
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"  # DNS-1123 subdomain
MAX_URI_LENGTH = 2048
MAX_CONFIG_BYTES = 1 << 20  # model.json: a ConfigMap holds at most 1 MiB
MAX_ARGS_BYTES = 16 << 10  # model.args as compact JSON
MAX_INPUT_DIMS = 8
MAX_PROBE_ELEMENTS = 1 << 24  # a probe batch of one: 64 MiB of float32 at most
Dtype = Literal["float32", "float16", "bfloat16"]  # spec.model.dtype
DTYPES: tuple[str, ...] = get_args(Dtype)
DEFAULT_DTYPE: Dtype = "float32"


def configmap_name(deployment: str) -> str:
    """Name of the ConfigMap that carries ``model.json`` for a ModelDeployment."""
    return f"{deployment}-model"


class _Wire(BaseModel):
    """Base for wire documents: camelCase on the wire, strict about unknown keys."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ModelSpec(_Wire):
    """How to build the network that a checkpoint's state dict loads into."""

    architecture: str = Field(pattern=ARCHITECTURE_PATTERN, max_length=256)
    args: dict[str, Any] = Field(default_factory=dict)
    input_shape: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        alias="inputShape", min_length=1, max_length=MAX_INPUT_DIMS
    )
    cast_weights: bool = Field(default=False, alias="castWeights")
    dtype: Dtype = DEFAULT_DTYPE  # the floating-point dtype of the model's weights

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The default dtype is left out, so revision digests and ``model.json`` stay
        what they were before the field existed (and older runtimes can read them)."""
        data: dict[str, Any] = handler(self)
        if data.get("dtype") == DEFAULT_DTYPE:
            del data["dtype"]
        return data

    @field_validator("args")
    @classmethod
    def _small_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(args, separators=(",", ":")))
        if size > MAX_ARGS_BYTES:
            raise ValueError(f"is {size} bytes as JSON, over the limit of {MAX_ARGS_BYTES}")
        return args

    @field_validator("input_shape")
    @classmethod
    def _small_probe(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if math.prod(shape) > MAX_PROBE_ELEMENTS:
            raise ValueError(
                f"has {math.prod(shape)} elements per sample, over the limit of "
                f"{MAX_PROBE_ELEMENTS}"
            )
        return shape


class Checkpoint(_Wire):
    """Where a checkpoint lives and the sha256 it must have."""

    uri: str = Field(pattern=URI_PATTERN, max_length=MAX_URI_LENGTH)
    sha256: str = Field(pattern=SHA256_PATTERN)
    secret_ref: str | None = Field(default=None, alias="secretRef", pattern=SECRET_NAME_PATTERN)


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


def parse_config(text: str | bytes) -> ModelConfig:
    """Parse ``model.json``, raising ConfigError with a short, readable reason.

    The reason names the fields at fault and pydantic's message for each, never the
    values (a hostile document must not be echoed into logs and status)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{CONFIG_KEY} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return ModelConfig.model_validate_json(text)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])[:80] or '<root>'}: {e['msg'][:120]}"
            for e in errors[:5]
        )
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ConfigError(f"invalid {CONFIG_KEY}: {problems}{more}") from None


class PodState(str, enum.Enum):  # noqa: UP042 (str() of members stays as it was)
    """Where a pod stands with the revision meant for it."""

    PENDING = "Pending"  # started, no model loaded yet
    LOADING = "Loading"  # fetching, verifying or validating the target revision
    SERVING = "Serving"  # serving the target revision
    FAILED = "Failed"  # the target revision failed; the pod serves its previous one


class PodReport(_Wire):
    """A ``ModelReplica``'s ``status``: what one pod serves and how its last swap went."""

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
