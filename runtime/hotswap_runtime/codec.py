"""Open Inference Protocol v2 tensors in JSON: FP32 requests in, FP32 responses out."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import InvalidInput


def decode_request(body: object) -> tuple[torch.Tensor, str, str | None]:
    """The input tensor, its name and the request id from an OIP v2 infer body."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise InvalidInput('infer body must be a JSON object with an "inputs" list')
    inputs = body["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput(f"this model takes exactly one input tensor, got {len(inputs)}")
    spec = inputs[0]
    name = str(spec.get("name", "input"))
    if spec.get("datatype") != "FP32":
        raise InvalidInput(f"input {name!r}: datatype {spec.get('datatype')!r}; only FP32")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape must be a list of non-negative integers")
    try:
        array = np.asarray(spec.get("data"), dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"input {name!r}: data is not a list of numbers ({exc})") from None
    if array.size != int(np.prod(shape)):
        raise InvalidInput(f"input {name!r}: {array.size} values do not fill shape {shape}")
    request_id = body.get("id")
    return (
        torch.from_numpy(array.reshape(shape)),
        name,
        None if request_id is None else str(request_id),
    )


def check_shape(x: torch.Tensor, input_shape: tuple[int, ...], name: str) -> None:
    if x.ndim != len(input_shape) + 1 or tuple(x.shape[1:]) != tuple(input_shape):
        raise InvalidInput(
            f"input {name!r}: shape {list(x.shape)} does not match [batch, "
            f"{', '.join(map(str, input_shape))}]"
        )


def encode_response(
    model: str, version: str, output: torch.Tensor, request_id: str | None
) -> dict[str, Any]:
    array = output.detach().to("cpu", torch.float32).numpy()
    body: dict[str, Any] = {
        "model_name": model,
        "model_version": version,
        "outputs": [
            {
                "name": "output",
                "datatype": "FP32",
                "shape": list(array.shape),
                "data": array.reshape(-1).tolist(),
            }
        ],
    }
    if request_id is not None:
        body["id"] = request_id
    return body
