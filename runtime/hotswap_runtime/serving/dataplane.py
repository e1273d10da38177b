"""The one data plane: what REST and gRPC both answer about the server and its model.

Both transports call a `DataPlane` and turn its typed answers into their own wire
format (KServe's `DataPlane` and `ModelMetadataResponse` are the model); neither sees
the runtime's other parts. The model's signature is fixed by the runtime: one FP32
input ``input`` of shape ``[-1, *inputShape]`` and one FP32 output ``output`` of shape
``[-1, *outputShape]``. Metadata shows them at every state: the input shape comes from
the serving revision, else the one being loaded; the output shape from the serving
model; a dimension not known yet is -1, and a tensor whose rank is not known yet has
shape ``[-1]``. Its ``batching`` section adds, once a model serves, what its forward
passes were sized to at load (footprint.py): activation and answer bytes per sample,
the forward batch, and the most samples one request's answer may hold.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata as package_metadata
from typing import TYPE_CHECKING, Any, TypeVar

from hotswap_contract.redact import clip
from hotswap_contract.wire import AnalysisFigures, ModelSpec
from hotswap_runtime.budget import Claim, MemoryBudget
from hotswap_runtime.control.desired import Failure, Status, SwapRecord
from hotswap_runtime.errors import ModelNotFound, ModelNotReady
from hotswap_runtime.serving.codec import DATATYPE, INPUT, OUTPUT, InferRequest
from hotswap_runtime.serving.inference import Engine
from hotswap_runtime.swap.footprint import Footprint
from hotswap_runtime.swap.swapper import Swapper

if TYPE_CHECKING:
    import torch

SERVER_NAME = "hotswap"
EXTENSIONS = ("binary_tensor_data",)
PLATFORM = "pytorch"
T = TypeVar("T")
Json = dict[str, Any]


def server_version() -> str:
    try:
        return package_metadata.version("hotswap")
    except package_metadata.PackageNotFoundError:
        return "0.0.0"


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: list[int]

    def to_json(self) -> Json:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: list[str]

    def to_json(self) -> Json:
        return {"name": self.name, "version": self.version, "extensions": self.extensions}


@dataclass(frozen=True)
class ModelReady:
    name: str
    ready: bool
    model_version: str | None

    def to_json(self) -> Json:
        return {"name": self.name, "ready": self.ready, "model_version": self.model_version}


@dataclass(frozen=True)
class ModelMetadata:
    """The OIP model metadata, plus what this pod serves and how it got there."""

    name: str
    versions: list[str]
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    model_version: str | None
    sha256: str | None
    loaded_at: str | None
    state: str
    target_revision: int | None
    device: str
    last_swap: SwapRecord | None
    last_failure: Failure | None
    max_batch_size: int
    max_queue_delay_microseconds: int
    architecture: str | None
    analysis: AnalysisFigures | None = None
    footprint: Footprint | None = None  # the serving model's forward passes, sized at load
    platform: str = PLATFORM

    def to_json(self) -> Json:
        body: Json = {
            "name": self.name,
            "versions": self.versions,
            "platform": self.platform,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "model_version": self.model_version,
            "sha256": self.sha256,
            "loaded_at": self.loaded_at,
            "state": self.state,
            "target_revision": self.target_revision,
            "device": self.device,
            "last_swap": _swap_json(self.last_swap),
            "last_failure": _failure_json(self.last_failure),
            "batching": {
                "max_batch_size": self.max_batch_size,
                "max_queue_delay_microseconds": self.max_queue_delay_microseconds,
                **(self.footprint.to_json() if self.footprint is not None else {}),
            },
        }
        if self.architecture is not None:
            body["architecture"] = self.architecture
        if self.analysis is not None:
            body["analysis"] = self.analysis.model_dump(
                mode="json", by_alias=True, exclude_none=True
            )
        return body


@dataclass(frozen=True)
class Batching:
    max_batch_size: int
    max_queue_delay_us: int


class DataPlane:
    """One model's metadata, readiness and inference, for every transport."""

    def __init__(
        self,
        model_name: str,
        device: str,
        batching: Batching,
        swapper: Swapper,
        status: Callable[[], Status],
        engine: Engine,
        budget: MemoryBudget,
    ) -> None:
        self.model_name = model_name
        self.device = device
        self.batching = batching
        self.swapper = swapper
        self.status = status
        self.engine = engine
        self.budget = budget
        self.draining = False  # set on SIGTERM: not ready, still serving

    # ---- versions and readiness -----------------------------------------------------

    def serving_version(self) -> str | None:
        """The version (revision) answering requests now, if any."""
        current = self.swapper.current()
        return None if current is None else str(current.revision.revision)

    def ready_version(self) -> str | None:
        """The serving version while the pod takes new work: None when nothing is loaded,
        the pod is draining after SIGTERM (requests still run; readiness says stop) or
        the request memory has been exhausted for a while (``budget.py``)."""
        if self.draining or self.budget.exhausted():
            return None
        return self.serving_version()

    def server_ready(self) -> str:
        """The serving version, or ModelNotReady saying why there is none to offer."""
        if self.draining:
            raise ModelNotReady(f"model {self.model_name!r} is shutting down (draining)")
        if self.budget.exhausted():
            raise ModelNotReady(
                f"model {self.model_name!r} is refusing requests: its request memory "
                f"(HOTSWAP_REQUEST_MEMORY_BYTES) has been spent for "
                f"{self.budget.exhausted_for():.0f}s; ready again once requests get through"
            )
        version = self.serving_version()
        if version is None:
            raise ModelNotReady(f"model {self.model_name!r} is not loaded yet")
        return version

    def model_ready(self, model: str, version: str | None) -> ModelReady:
        """Whether ``model`` (at ``version``, when given) takes new work here."""
        self.check_model(model)
        serving = self.serving_version()
        ready = self.ready_version() is not None and version in (None, serving)
        return ModelReady(model, ready, serving)

    def check_model(self, model: str) -> None:
        if model != self.model_name:
            raise ModelNotFound(
                f"model {clip(model, 64)!r} is not served here; this runtime serves "
                f"{self.model_name!r}"
            )

    def check_version(self, version: str | None) -> str:
        """The serving version, which must equal ``version`` when one is given."""
        serving = self.serving_version()
        if version and version != serving:
            raise ModelNotFound(
                f"model {self.model_name!r} has no version {clip(version, 40)!r} "
                f"here; this pod serves version {serving or 'none yet'}"
            )
        return serving or ""

    # ---- metadata -------------------------------------------------------------------

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, server_version(), list(EXTENSIONS))

    def model_metadata(self, model: str, version: str | None = None) -> ModelMetadata:
        self.check_model(model)
        self.check_version(version)
        status = self.status()
        serving = status.serving
        spec = _spec(status)
        inputs, outputs = self._signature(spec)
        return ModelMetadata(
            name=self.model_name,
            versions=[str(serving.revision.revision)] if serving else [],
            inputs=[inputs],
            outputs=[outputs],
            model_version=str(serving.revision.revision) if serving else None,
            sha256=serving.revision.checkpoint.sha256 if serving else None,
            loaded_at=serving.loaded_at if serving else None,
            state=status.state.value,
            target_revision=status.target.revision if status.target else None,
            device=self.device,
            last_swap=status.last_swap,
            last_failure=status.last_failure,
            max_batch_size=self.batching.max_batch_size,
            max_queue_delay_microseconds=self.batching.max_queue_delay_us,
            architecture=spec.architecture if spec is not None else None,
            analysis=status.analysis,
            footprint=self._footprint(),
        )

    def _footprint(self) -> Footprint | None:
        current = self.swapper.current()
        return current.footprint if current is not None else None

    def _signature(self, spec: ModelSpec | None) -> tuple[TensorMetadata, TensorMetadata]:
        """The model's input and output, as far as they are known now."""
        current = self.swapper.current()
        input_shape = [-1, *spec.input_shape] if spec is not None else [-1]
        output_shape = [-1, *current.output_shape[1:]] if current is not None else [-1]
        return (
            TensorMetadata(INPUT, DATATYPE, input_shape),
            TensorMetadata(OUTPUT, DATATYPE, output_shape),
        )

    # ---- inference ------------------------------------------------------------------

    def admit(self, cost: int) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold ``cost`` bytes of the request memory budget (``budget.py``) for a block,
        taken whole: for a request already received (gRPC). Overloaded when the budget
        does not grant them within its wait."""
        return self.budget.hold(cost)

    def claim(self, limit: int) -> Claim:
        """A claim of at most ``limit`` bytes on the request memory budget, charged as a
        request is received (REST) and given back when its block ends."""
        return self.budget.claim(limit)

    async def infer(
        self,
        decode: Callable[[], InferRequest],
        encode: Callable[[str, torch.Tensor, InferRequest], T],
    ) -> tuple[T, str]:
        """Decode, run and encode one request off the event loop; the encoded answer and
        the version that computed it."""
        return await self.engine.serve(decode, encode)


def _spec(status: Status) -> ModelSpec | None:
    """The serving revision's model, else the one being loaded."""
    if status.serving is not None:
        return status.serving.revision.model
    return status.target.model if status.target is not None else None


def _swap_json(swap: SwapRecord | None) -> Json | None:
    if swap is None:
        return None
    return {
        "revision": swap.revision.revision,
        "result": swap.result,
        "mode": swap.kind,
        "phases": swap.phases,
    }


def _failure_json(failure: Failure | None) -> Json | None:
    if failure is None:
        return None
    return {
        "revision": failure.revision,
        "sha256": failure.sha256,
        "code": failure.code,
        "reason": failure.reason,
        "at": failure.at,
    }
