"""What both protocols (REST and gRPC) answer about the server and its one model.

The model's signature is fixed by the runtime: one FP32 input ``input`` of shape
``[-1, *inputShape]`` and one FP32 output ``output`` of shape ``[-1, *outputShape]``.
Metadata shows them at every state: the input shape comes from the serving revision,
else the one being loaded; the output shape from the serving model; a dimension not
known yet is -1, and a tensor whose rank is not known yet has shape ``[-1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata as package_metadata
from typing import TYPE_CHECKING, Any

from hotswap_contract.redact import clip
from hotswap_runtime.control.desired import Failure
from hotswap_runtime.errors import ModelNotFound
from hotswap_runtime.serving.codec import DATATYPE, INPUT, OUTPUT

if TYPE_CHECKING:
    from hotswap_runtime.service import Runtime

SERVER_NAME = "hotswap"
EXTENSIONS = ("binary_tensor_data",)
PLATFORM = "pytorch"


def server_version() -> str:
    try:
        return package_metadata.version("hotswap")
    except package_metadata.PackageNotFoundError:
        return "0.0.0"


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}


def serving_version(runtime: Runtime) -> str | None:
    """The version (revision) answering requests now, if any."""
    current = runtime.swapper.current()
    return None if current is None else str(current.revision.revision)


def ready_version(runtime: Runtime) -> str | None:
    """The serving version while the pod takes new work: None when nothing is loaded or
    the pod is draining after SIGTERM (requests still run; readiness says stop)."""
    return None if runtime.draining else serving_version(runtime)


def check_model(runtime: Runtime, model: str) -> None:
    name = runtime.settings.model_name
    if model != name:
        raise ModelNotFound(
            f"model {clip(model, 64)!r} is not served here; this runtime serves {name!r}"
        )


def check_version(runtime: Runtime, version: str | None) -> str:
    """The serving version, which must equal ``version`` when one is given."""
    serving = serving_version(runtime)
    if version and version != serving:
        raise ModelNotFound(
            f"model {runtime.settings.model_name!r} has no version {clip(version, 40)!r} "
            f"here; this pod serves version {serving or 'none yet'}"
        )
    return serving or ""


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: list[int]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


def signature(runtime: Runtime) -> tuple[Tensor, Tensor]:
    """The model's input and output, as far as they are known now."""
    status = runtime.reconciler.status()
    serving = status.serving
    spec = serving.revision.model if serving else (status.target.model if status.target else None)
    current = runtime.swapper.current()
    input_shape = [-1, *spec.input_shape] if spec is not None else [-1]
    output_shape = [-1, *current.output_shape[1:]] if current is not None else [-1]
    return Tensor(INPUT, DATATYPE, input_shape), Tensor(OUTPUT, DATATYPE, output_shape)


def model_metadata(runtime: Runtime) -> dict[str, Any]:
    status = runtime.reconciler.status()
    serving = status.serving
    spec = serving.revision.model if serving else (status.target.model if status.target else None)
    inputs, outputs = signature(runtime)
    body: dict[str, Any] = {
        "name": runtime.settings.model_name,
        "versions": [str(serving.revision.revision)] if serving else [],
        "platform": PLATFORM,
        "inputs": [inputs.to_json()],
        "outputs": [outputs.to_json()],
        "model_version": str(serving.revision.revision) if serving else None,
        "sha256": serving.revision.checkpoint.sha256 if serving else None,
        "loaded_at": serving.loaded_at if serving else None,
        "state": status.state.value,
        "target_revision": status.target.revision if status.target else None,
        "device": str(runtime.device),
        "last_swap": None,
        "last_failure": _failure(status.last_failure),
        "batching": {
            "max_batch_size": runtime.settings.max_batch_size,
            "max_queue_delay_microseconds": runtime.settings.max_queue_delay_us,
        },
    }
    if spec is not None:
        body["architecture"] = spec.architecture
    if status.last_swap is not None:
        swap = status.last_swap
        body["last_swap"] = {
            "revision": swap.revision.revision,
            "result": swap.result,
            "mode": swap.kind,
            "phases": swap.phases,
        }
    return body


def _failure(failure: Failure | None) -> dict[str, Any] | None:
    if failure is None:
        return None
    return {
        "revision": failure.revision,
        "sha256": failure.sha256,
        "code": failure.code,
        "reason": failure.reason,
        "at": failure.at,
    }
