"""Open Inference Protocol v2 tensors: REST (JSON and binary tensor data) and gRPC.

The model takes one FP32 tensor named ``input`` (``[batch, *inputShape]``) and gives one
FP32 tensor named ``output``. Decoding checks everything a request can get wrong on its
own, each failure an ``InvalidInput`` naming what is wrong (never echoing the body):
layout and types, the input's name and datatype, the shape (non-negative integers whose
product is checked against what the body can hold before anything is allocated), data
that does not fill the shape, requested outputs. The shape against the model serving
when the request runs is checked on its lease (``check_shape``).

REST bodies are JSON, or JSON followed by binary tensor data when the request carries
``Inference-Header-Content-Length`` (the JSON's length): an input whose ``parameters``
hold ``binary_data_size`` takes that many bytes of the binary part, in input order. An
answer is binary when the requested output's ``binary_data`` parameter says so, else
when the request's ``binary_data_output`` parameter does; it is then the JSON header
followed by the output's little-endian bytes, and the header's length is returned for
the ``Inference-Header-Content-Length`` response header.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import torch
from google.protobuf.message import DecodeError

from hotswap_contract.redact import clip
from hotswap_runtime.errors import InvalidInput
from hotswap_runtime.serving import grpcwire, jsonscan
from hotswap_runtime.serving.grpc_v2 import inference_pb2 as pb

INPUT = "input"
OUTPUT = "output"
DATATYPE = "FP32"
ITEMSIZE = 4
MAX_RANK = 9  # batch + the 8 dimensions a ModelSpec's inputShape may have
MAX_ID = 256  # characters of a request id echoed back


@dataclass
class InferRequest:
    """A decoded infer request: the input tensor and how to answer."""

    tensor: torch.Tensor
    request_id: str | None = None
    binary_output: bool = False
    version: str | None = None  # the model version asked for, if any

    @property
    def batch(self) -> int:
        return int(self.tensor.shape[0])


def check_shape(x: torch.Tensor, input_shape: tuple[int, ...], name: str = INPUT) -> None:
    if x.ndim != len(input_shape) + 1 or tuple(x.shape[1:]) != tuple(input_shape):
        raise InvalidInput(
            f"input {name!r}: shape {list(x.shape)} does not match [batch, "
            f"{', '.join(map(str, input_shape))}]"
        )


# ---- REST ----------------------------------------------------------------------------


def decode_rest(
    body: bytes | bytearray, json_length: int | None, version: str | None = None
) -> InferRequest:
    """Decode a REST infer body (``json_length``: the Inference-Header-Content-Length)."""
    size = len(body)
    if json_length is not None and not 0 < json_length <= size:
        raise InvalidInput(
            f"Inference-Header-Content-Length {json_length} does not fit a body of {size} bytes"
        )
    end = size if json_length is None else json_length
    skeleton, spans = jsonscan.split(body, end)
    if not isinstance(skeleton, dict):
        raise InvalidInput('the infer request must be a JSON object with an "inputs" list')
    params = _parameters(skeleton.get("parameters"), "the request's parameters")
    spec = _one_input(skeleton.get("inputs"))
    shape = _shape(spec.get("shape"), len(body))
    in_params = _parameters(spec.get("parameters"), f"input {INPUT!r} parameters")
    count = math.prod(shape)
    binary_size = in_params.get("binary_data_size")
    if binary_size is not None:
        array = _binary_input(body, end, binary_size, count, json_length)
    else:
        if end != size:
            raise InvalidInput(
                f"the body has {size - end} bytes of binary data that no input claims with "
                "binary_data_size"
            )
        array = _json_input(body, spec, spans, count, len(shape))
    return InferRequest(
        tensor=torch.from_numpy(array.reshape(shape)),
        request_id=_request_id(skeleton.get("id")),
        binary_output=_binary_output(skeleton.get("outputs"), params),
        version=version,
    )


def encode_rest(
    model: str, version: str, output: torch.Tensor, request: InferRequest
) -> tuple[bytes, int | None]:
    """The answer's bytes, and the JSON header's length when binary data follows it."""
    array = _as_array(output)
    head: dict[str, Any] = {"model_name": model, "model_version": version}
    if request.request_id is not None:
        head["id"] = request.request_id
    meta: dict[str, Any] = {"name": OUTPUT, "datatype": DATATYPE, "shape": list(array.shape)}
    if request.binary_output:
        meta["parameters"] = {"binary_data_size": array.nbytes}
        head["outputs"] = [meta]
        text = orjson.dumps(head)
        return text + array.tobytes(), len(text)
    opened = orjson.dumps(head)[:-1] + b',"outputs":[' + orjson.dumps(meta)[:-1]
    return opened + b',"data":' + jsonscan.dumps_numbers(array) + b"}]}", None


def _one_input(inputs: object) -> dict[str, Any]:
    if not isinstance(inputs, list):
        raise InvalidInput('the infer request must be a JSON object with an "inputs" list')
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput(
            f"this model takes exactly one input tensor, {INPUT!r}; the request has {len(inputs)}"
        )
    spec: dict[str, Any] = inputs[0]
    _input_name(spec.get("name"))
    _datatype(spec.get("datatype"))
    return spec


def _input_name(name: object) -> None:
    if not isinstance(name, str):
        raise InvalidInput(f"the input needs a string name; this model's input is {INPUT!r}")
    if name != INPUT:
        raise InvalidInput(
            f"unknown input {_short(name)!r}; this model takes one input named {INPUT!r}"
        )


def _datatype(datatype: object) -> None:
    if datatype != DATATYPE:
        shown = _short(datatype) if isinstance(datatype, str) else type(datatype).__name__
        raise InvalidInput(f"input {INPUT!r}: datatype {shown!r}; this model takes {DATATYPE}")


def _shape(shape: object, body_bytes: int) -> list[int]:
    if (
        not isinstance(shape, list | tuple)
        or not shape
        or len(shape) > MAX_RANK
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise InvalidInput(
            f"input {INPUT!r}: shape must be a list of 1 to {MAX_RANK} non-negative integers"
        )
    dims = [int(d) for d in shape]
    if dims[0] < 1:
        raise InvalidInput(f"input {INPUT!r}: the batch dimension (the first) must be at least 1")
    count = math.prod(dims)
    if count * ITEMSIZE > 2 * body_bytes + ITEMSIZE:
        raise InvalidInput(
            f"input {INPUT!r}: shape {_shape_text(dims)} has {count} elements, more than a "
            f"body of {body_bytes} bytes holds"
        )
    return dims


def _json_input(
    body: bytes | bytearray,
    spec: dict[str, Any],
    spans: list[jsonscan.NumberSpan],
    count: int,
    rank: int,
) -> np.ndarray[Any, Any]:
    if "data" not in spec:
        raise InvalidInput(f"input {INPUT!r} has neither data nor a binary_data_size parameter")
    data = spec["data"]
    out = np.empty(count, np.float32)
    span = jsonscan.span_of(data, spans)
    if span is not None:
        if span.depth > max(rank, 1):
            raise InvalidInput(
                f"input {INPUT!r}: data is nested {span.depth} deep, deeper than its "
                f"shape's {rank} dimensions"
            )
        jsonscan.read_numbers(body, span, out, f"input {INPUT!r}")
        return out
    # Not a plain array of numbers (strings, booleans, irregular nesting): small, since
    # it was parsed with the skeleton. Only numbers may fill an FP32 tensor.
    values = _flatten_numbers(data, rank)
    if len(values) != count:
        raise InvalidInput(f"input {INPUT!r}: {len(values)} values do not fill the shape's {count}")
    out[:] = values
    return out


def _flatten_numbers(data: object, rank: int) -> list[float]:
    if not isinstance(data, list):
        raise InvalidInput(f"input {INPUT!r}: data must be an array of numbers")
    flat: list[float] = []
    stack: list[tuple[object, int]] = [(data, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list):
            if depth >= max(rank, 1):
                raise InvalidInput(f"input {INPUT!r}: data is nested deeper than its shape")
            stack.extend((child, depth + 1) for child in reversed(item))
        elif isinstance(item, int | float) and not isinstance(item, bool):
            flat.append(float(item))
        else:
            raise InvalidInput(
                f"input {INPUT!r}: data must be numbers for {DATATYPE}, found {type(item).__name__}"
            )
    return flat


def _binary_input(
    body: bytes | bytearray, end: int, size: object, count: int, json_length: int | None
) -> np.ndarray[Any, Any]:
    if json_length is None:
        raise InvalidInput(
            f"input {INPUT!r} has binary_data_size but the request has no "
            "Inference-Header-Content-Length header"
        )
    if type(size) is not int or size < 0:
        raise InvalidInput(f"input {INPUT!r}: binary_data_size must be a non-negative integer")
    available = len(body) - end
    if size != available:
        raise InvalidInput(
            f"input {INPUT!r}: binary_data_size {size} but the body carries {available} "
            "bytes of binary data"
        )
    if size != count * ITEMSIZE:
        raise InvalidInput(
            f"input {INPUT!r}: {size} bytes of binary data do not fill the shape's {count} "
            f"{DATATYPE} values ({count * ITEMSIZE} bytes)"
        )
    array = np.frombuffer(body, dtype="<f4", count=count, offset=end)
    if not array.flags.aligned or not array.flags.writeable:
        array = array.copy()  # torch wants aligned, writable memory
    return array


def _binary_output(outputs: object, params: dict[str, Any]) -> bool:
    default = params.get("binary_data_output", False)
    if not isinstance(default, bool):
        raise InvalidInput("parameter binary_data_output must be true or false")
    if outputs is None:
        return default
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise InvalidInput('"outputs" must be a list of objects naming requested outputs')
    binary = default
    for wanted in outputs:
        _output_name(wanted.get("name"))
        out_params = _parameters(wanted.get("parameters"), f"output {OUTPUT!r} parameters")
        if out_params.get("classification"):
            raise InvalidInput("the classification extension is not supported by this runtime")
        flag = out_params.get("binary_data", default)
        if not isinstance(flag, bool):
            raise InvalidInput(f"output {OUTPUT!r}: parameter binary_data must be true or false")
        binary = flag
    return binary


def _output_name(name: object) -> None:
    if name != OUTPUT:
        shown = _short(name) if isinstance(name, str) else type(name).__name__
        raise InvalidInput(f"unknown output {shown!r}; this model gives one output, {OUTPUT!r}")


def _parameters(params: object, what: str) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return params


def _request_id(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput('the request "id" must be a string')
    return value[:MAX_ID]


# ---- gRPC ----------------------------------------------------------------------------


def decode_grpc(
    raw: bytes, scanned: grpcwire.Scan | None = None
) -> tuple[pb.ModelInferRequest, InferRequest]:
    """Decode a serialized ModelInferRequest (raw_input_contents or typed contents);
    ``scanned``: what ``grpcwire.scan`` read from it, if it was scanned already.

    The raw input is read in place: protobuf parses the message without it (the rest
    copied out), so its bytes are copied once, into the tensor."""
    scanned = scanned or grpcwire.scan(raw)
    held = scanned.raw_input
    try:
        if held is None:
            message = pb.ModelInferRequest.FromString(raw)
        else:
            message = pb.ModelInferRequest.FromString(raw[: held.field] + raw[held.end :])
    except DecodeError:
        raise InvalidInput("the message is not a ModelInferRequest") from None
    if len(message.inputs) != 1:
        raise InvalidInput(
            f"this model takes exactly one input tensor, {INPUT!r}; the request has "
            f"{len(message.inputs)}"
        )
    spec = message.inputs[0]
    _input_name(spec.name)
    _datatype(spec.datatype)
    shape = _shape(list(spec.shape), len(raw))
    count = math.prod(shape)
    if held is not None:
        size = held.end - held.start
        if size != count * ITEMSIZE:
            raise InvalidInput(
                f"input {INPUT!r}: {size} bytes of raw_input_contents do not fill "
                f"the shape's {count} {DATATYPE} values ({count * ITEMSIZE} bytes)"
            )
        array = np.frombuffer(raw, dtype="<f4", count=count, offset=held.start).copy()
    else:
        values = spec.contents.fp32_contents
        if len(values) != count:
            raise InvalidInput(
                f"input {INPUT!r}: {len(values)} fp32_contents do not fill the shape's {count}"
            )
        # One value at a time: np.asarray would build a Python float for each first
        # (about 12 times the bytes on the wire).
        array = np.fromiter(values, np.float32, count)
    for wanted in message.outputs:
        _output_name(wanted.name)
    request = InferRequest(
        tensor=torch.from_numpy(array.reshape(shape)),
        request_id=message.id[:MAX_ID] or None,
        version=message.model_version or None,
    )
    return message, request


def encode_grpc(model: str, version: str, output: torch.Tensor, request: InferRequest) -> bytes:
    array = _as_array(output)
    answer = pb.ModelInferResponse(
        model_name=model, model_version=version, id=request.request_id or ""
    )
    answer.outputs.add(name=OUTPUT, datatype=DATATYPE, shape=list(array.shape))
    answer.raw_output_contents.append(array.tobytes())
    return answer.SerializeToString()


# ---- helpers -------------------------------------------------------------------------


def _as_array(output: torch.Tensor) -> np.ndarray[Any, Any]:
    array: np.ndarray[Any, Any] = output.detach().to("cpu", torch.float32).contiguous().numpy()
    return array


def _short(text: str, limit: int = 64) -> str:
    return clip(text, limit)


def _shape_text(dims: list[int]) -> str:
    return clip(str(dims), 120)
