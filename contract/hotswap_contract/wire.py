"""Wire formats shared by the operator and the runtime.

Three documents cross the boundary between them:

* ``ModelConfig``: the ``model.json`` key of the ``<name>-model`` ConfigMap. The
  operator writes it; every runtime pod reads it (mounted file and API watch) and
  reconciles toward the revision it names for that pod.
* ``Peers``: the ``peers.json`` key of the ``<name>-peers`` ConfigMap, the pods that may
  exchange checkpoint files (written by the operator from the Pod objects).
* ``PodReport``: what a runtime pod reports, the ``status`` of its own ``ModelReplica``
  object (named after the pod, owned by the pod, labelled with the ModelDeployment).

This module imports only the standard library, pydantic and schemes.py, so the operator
image (which never installs torch) can use it.
"""

from __future__ import annotations

import enum
import ipaddress
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
    model_validator,
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
PEER_PORT = 8083  # verified cache entries for the pods of the same ModelDeployment
PEERS_KEY = "peers.json"  # the key of the <name>-peers ConfigMap (Peers)
MAX_PEERS = 2000  # pods listed in peers.json
MAX_ORIGIN_CONCURRENCY = 64  # spec.distribution.originConcurrency bound (CRD and runtime)
MAX_BATCH_SIZE = 1024  # spec.runtime.batching.maxBatchSize bound (CRD and runtime)
MAX_QUEUE_DELAY_US = 1_000_000  # spec.runtime.batching.maxQueueDelayMicroseconds bound
MAX_FORWARD_BATCH = 1 << 16  # policy.maxForwardBatch bound (chart and runtime)
MIN_FORWARD_MEMORY_BYTES = 1 << 20  # policy.forwardMemoryBytes bound (chart and runtime)
SWAP_PHASES = ("fetch", "parse", "load", "validate", "shadow", "activate")  # swapSeconds keys
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


def peers_configmap_name(deployment: str) -> str:
    """Name of the ConfigMap that lists a ModelDeployment's pods for peer transfer."""
    return f"{deployment}-peers"


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


def _drop_none(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """Leave out optional fields that are unset, so documents written before the fields
    existed keep their digests and older readers (extra="forbid") still read them."""
    for key in keys:
        if data.get(key, 0) is None:
            del data[key]
    return data


class Evaluation(_Wire):
    """A labelled set every pod runs new weights on before they serve: ``inputs`` a float
    tensor ``[N, *inputShape]``, ``labels`` an integer tensor ``[N]`` of class indices
    (the model's output is ``[N, classes]``). The revision fails when its top-1
    accuracy is below ``minAccuracy``, or below the serving revision's own accuracy on
    the same set minus ``maxRegression``."""

    inputs: Checkpoint
    labels: Checkpoint
    min_accuracy: float | None = Field(default=None, ge=0, le=1, alias="minAccuracy")
    max_regression: float | None = Field(default=None, ge=0, le=1, alias="maxRegression")

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_none(
            handler(self), ("minAccuracy", "maxRegression", "min_accuracy", "max_regression")
        )


class Validation(_Wire):
    """What new weights must pass before they serve: expected outputs for a probe input
    (``input`` with ``expected``, within ``tolerance``), a labelled evaluation set, or
    both."""

    input: Checkpoint | None = None
    expected: Checkpoint | None = None
    tolerance: float = Field(default=1e-4, ge=0)
    evaluation: Evaluation | None = None

    @model_validator(mode="after")
    def _complete(self) -> Validation:
        if (self.input is None) != (self.expected is None):
            raise ValueError("input and expected go together: give both or neither")
        if self.input is None and self.evaluation is None:
            raise ValueError("give input and expected, an evaluation, or both")
        return self

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_none(handler(self), ("input", "expected", "evaluation"))

    def files(self) -> list[tuple[str, Checkpoint]]:
        """Every file it names, with its field path below spec.validation."""
        named = [("input", self.input), ("expected", self.expected)]
        if self.evaluation is not None:
            named += [
                ("evaluation.inputs", self.evaluation.inputs),
                ("evaluation.labels", self.evaluation.labels),
            ]
        return [(field, file) for field, file in named if file is not None]


ShadowMetric = Literal["top1", "maxAbsDiff", "totalVariation"]
OnTimeout = Literal["Activate", "Wait"]
MAX_SHADOW_SAMPLES = 100_000


class Shadow(_Wire):
    """Score sampled live requests with the new weights, after the serving model has
    answered them, before the new weights serve (docs/analysis.md).

    A scored sample *disagrees* when the two answers differ by ``metric``: ``top1``
    (argmax of any output row differs), ``maxAbsDiff`` (largest absolute difference
    above ``tolerance``) or ``totalVariation`` (total variation distance between the
    rows' softmax above ``tolerance``). A sequential test refuses the revision when its
    disagreement rate is at ``maxDisagreement`` or above, and passes it when the rate is
    at most a fifth of that; ``maxSamples`` ends the test either way."""

    metric: ShadowMetric = "top1"
    max_disagreement: float = Field(default=0.01, gt=0, le=0.5, alias="maxDisagreement")
    tolerance: float = Field(default=1e-3, ge=0)
    sample_rate: float = Field(default=1.0, gt=0, le=1, alias="sampleRate")
    max_samples: int = Field(default=5000, ge=10, le=MAX_SHADOW_SAMPLES, alias="maxSamples")
    timeout_seconds: int = Field(default=300, ge=1, le=86_400, alias="timeoutSeconds")
    on_timeout: OnTimeout = Field(default="Wait", alias="onTimeout")


class Analysis(_Wire):
    """How a pod judges new weights on live traffic before they serve."""

    shadow: Shadow | None = None


class Revision(_Wire):
    """One numbered revision: a model and the checkpoint that fills it. ``analysis``
    (how a pod judges it on live traffic) is not part of what the revision is made of:
    the operator writes it once at the top of model.json and ``ModelConfig.revision_for``
    hands it to the pod with its revision."""

    revision: int = Field(ge=1)
    model: ModelSpec
    checkpoint: Checkpoint
    validation: Validation | None = None
    analysis: Analysis | None = None

    @property
    def key(self) -> tuple[int, str]:
        return (self.revision, self.checkpoint.sha256)

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_none(handler(self), ("analysis",))


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
    analysis: Analysis | None = None  # spec.analysis: how pods judge a newer revision

    def revision_for(self, pod: str) -> Revision:
        """The revision meant for ``pod``, with the analysis settings to judge it by."""
        chosen = self.stable
        if self.candidate is not None and pod in self.candidate_pods:
            chosen = self.candidate
        if self.analysis is None:
            return chosen
        return chosen.model_copy(update={"analysis": self.analysis})

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_none(handler(self), ("analysis",))

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


class Peer(_Wire):
    """One runtime pod of a ModelDeployment: its name and the address the kubelet gave
    it (``status.podIP``), where it serves its verified cache entries on PEER_PORT."""

    name: str = Field(pattern=SECRET_NAME_PATTERN, max_length=253)
    ip: str = Field(max_length=45)

    @field_validator("ip")
    @classmethod
    def _address(cls, value: str) -> str:
        return str(ipaddress.ip_address(value))  # ValueError: pydantic's message


class Peers(_Wire):
    """The ``peers.json`` key of the ``<name>-peers`` ConfigMap, written by the operator
    from the Pod objects (never from the pods' own reports): the runtime pods that may
    exchange cache entries, oldest first. The first ``origin_concurrency`` of them read
    the store (splitting its files between them); the others take the files from peers
    and fall back to the store (docs/architecture.md, "Fleet distribution")."""

    name: str
    generation: int = Field(ge=0)
    origin_concurrency: int = Field(ge=1, le=MAX_ORIGIN_CONCURRENCY, alias="originConcurrency")
    peers: tuple[Peer, ...] = Field(default=(), max_length=MAX_PEERS)

    @property
    def origins(self) -> tuple[str, ...]:
        return tuple(peer.name for peer in self.peers[: self.origin_concurrency])

    def dumps(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)


def parse_peers(text: str | bytes) -> Peers:
    """Parse ``peers.json``, raising ConfigError with a short reason (no values)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{PEERS_KEY} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return Peers.model_validate_json(text)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        where = "; ".join(".".join(str(p) for p in e["loc"])[:80] for e in errors[:5])
        raise ConfigError(f"invalid {PEERS_KEY}: {where or '<root>'}") from None


class Fetched(_Wire):
    """Where the bytes of a pod's last checkpoint fetch came from: the store, peers (how
    many distinct ones), or its own cache."""

    store_bytes: int = Field(default=0, ge=0, alias="storeBytes")
    peer_bytes: int = Field(default=0, ge=0, alias="peerBytes")
    cached_bytes: int = Field(default=0, ge=0, alias="cachedBytes")
    peers: int = Field(default=0, ge=0)
    peer_failures: int = Field(default=0, ge=0, alias="peerFailures")


class PodState(str, enum.Enum):  # noqa: UP042 (str() of members stays as it was)
    """Where a pod stands with the revision meant for it."""

    PENDING = "Pending"  # started, no model loaded yet
    LOADING = "Loading"  # fetching, verifying or validating the target revision
    SERVING = "Serving"  # serving the target revision
    FAILED = "Failed"  # the target revision failed; the pod serves its previous one


ShadowDecision = Literal["Running", "Waiting", "Passed", "Failed", "Activated", "Skipped"]


class EvaluationFigures(_Wire):
    """A revision's accuracy on the evaluation set, and the serving revision's."""

    revision: int
    samples: int
    accuracy: float
    serving_revision: int | None = Field(default=None, alias="servingRevision")
    serving_accuracy: float | None = Field(default=None, alias="servingAccuracy")
    passed: bool


class ShadowFigures(_Wire):
    """Where a revision's shadow comparison stands (``Running`` while it scores;
    ``Waiting`` past its timeout with too few samples; ``Activated``: timed out and
    activated as spec.analysis.shadow.onTimeout says; ``Skipped``: no comparison was
    possible, e.g. nothing served yet)."""

    revision: int
    metric: ShadowMetric
    decision: ShadowDecision
    samples: int = 0
    disagreements: int = 0
    skipped: int = 0  # sampled requests not scored: shadow busy, too old or over budget
    max_abs_diff: float | None = Field(default=None, alias="maxAbsDiff")
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.disagreements / self.samples if self.samples else 0.0


class AnalysisFigures(_Wire):
    """What a pod found judging its target revision: evaluation set and shadow."""

    evaluation: EvaluationFigures | None = None
    shadow: ShadowFigures | None = None


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
    analysis: AnalysisFigures | None = None
    fetched: Fetched | None = None

    def to_status(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def short_sha(sha256: str) -> str:
    return sha256[:12]


def is_sha256(value: str) -> bool:
    return re.fullmatch(SHA256_PATTERN, value) is not None
