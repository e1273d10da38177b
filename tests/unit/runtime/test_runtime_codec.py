"""The OIP v2 codec: JSON and binary REST bodies, gRPC messages, chunked JSON numbers."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
import torch

from hotswap_runtime.errors import InvalidInput
from hotswap_runtime.serving import jsonscan
from hotswap_runtime.serving.codec import (
    InferRequest,
    decode_grpc,
    decode_rest,
    encode_grpc,
    encode_rest,
)
from hotswap_runtime.serving.grpc_v2 import inference_pb2 as pb


def body(data: object, shape: object = (2, 2), **extra: object) -> bytes:
    spec = {"name": "input", "shape": shape, "datatype": "FP32", "data": data}
    return json.dumps({"inputs": [spec], **extra}).encode()


def binary(x: np.ndarray, **head: object) -> tuple[bytes, int]:
    spec = {
        "name": "input",
        "shape": list(x.shape),
        "datatype": "FP32",
        "parameters": {"binary_data_size": x.nbytes},
    }
    text = json.dumps({"inputs": [spec], **head}).encode()
    return text + x.astype("<f4").tobytes(), len(text)


@pytest.mark.parametrize("data", [[[1, 2], [3, 4]], [1, 2, 3, 4], [1.0, 2e0, 3, 4.0]])
def test_json_nested_or_flat(data: object) -> None:
    request = decode_rest(bytearray(body(data, id="r1")), None)
    assert request.tensor.tolist() == [[1, 2], [3, 4]]
    assert request.request_id == "r1" and not request.binary_output


def test_big_json_is_read_in_chunks_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonscan, "CHUNK", 64)  # many chunks, split at commas
    x = np.random.default_rng(0).random((3, 50), dtype=np.float32)
    request = decode_rest(bytearray(body(x.tolist(), shape=[3, 50])), None)
    assert torch.equal(request.tensor, torch.from_numpy(x))


def test_binary_input_and_binary_output() -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    raw, length = binary(x, parameters={"binary_data_output": True}, id="b")
    request = decode_rest(bytearray(raw), length)
    assert torch.equal(request.tensor, torch.from_numpy(x)) and request.binary_output
    content, head = encode_rest("m", "3", request.tensor * 2, request)
    assert head is not None
    meta = json.loads(content[:head])
    assert meta["model_version"] == "3" and meta["id"] == "b"
    assert meta["outputs"][0]["parameters"] == {"binary_data_size": 32}
    assert np.frombuffer(content[head:], "<f4").tolist() == (x * 2).ravel().tolist()


def test_requested_output_binary_flag_overrides_the_request_default() -> None:
    outputs = [{"name": "output", "parameters": {"binary_data": False}}]
    request = decode_rest(
        bytearray(body([1, 2, 3, 4], parameters={"binary_data_output": True}, outputs=outputs)),
        None,
    )
    content, head = encode_rest("m", "1", request.tensor, request)
    assert head is None
    assert orjson.loads(content)["outputs"][0]["data"] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("raw", "length", "why"),
    [
        (b"", None, "body is empty"),
        (b"{", None, "not valid JSON"),
        (b"\xff\xfe{}", None, "not valid JSON"),
        (b"[1]", None, '"inputs" list'),
        (b'{"inputs": {}}', None, '"inputs" list'),
        (body([1, 2, 3, 4]).replace(b'"input"', b'"x"'), None, "unknown input 'x'"),
        (body([1, 2, 3, 4]).replace(b'"FP32"', b'"FP64"'), None, "datatype 'FP64'"),
        (body([1, 2, 3, 4], shape=[2, "2"]), None, "non-negative integers"),
        (body([1, 2, 3, 4], shape=[2, -2]), None, "non-negative integers"),
        (body([1, 2, 3, 4], shape=[2, True]), None, "non-negative integers"),
        (body([], shape=[0, 4]), None, "batch dimension"),
        (body([1, 2, 3]), None, "3 values do not fill"),
        (body([1, 2, 3, 4, 5]), None, "more values than"),
        (body([1, "2", 3, 4]), None, "must be numbers"),
        (body([1, True, 3, 4]), None, "must be numbers"),
        (body([[[1, 2]], [[3, 4]]]), None, "nested 3 deep"),
        (body([1, 2, 3, 4], shape=[2**62, 2**62]), None, "more than a body"),
        (body([1, 2, 3, 4], outputs=[{"name": "probs"}]), None, "unknown output 'probs'"),
        (body([1, 2, 3, 4], id=7), None, '"id" must be a string'),
        (b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32"}]}', None, "neither"),
        (b"[" * 5000 + b"]" * 5000, None, "not valid JSON"),
        (body([1, 2, 3, 4]), 9999, "does not fit"),
    ],
)
def test_malformed_rest_bodies_name_what_is_wrong(raw: bytes, length: int | None, why: str) -> None:
    with pytest.raises(InvalidInput, match=why) as caught:
        decode_rest(bytearray(raw), length)
    assert len(str(caught.value)) < 300


def test_binary_sizes_must_add_up() -> None:
    x = np.zeros((2, 2), np.float32)
    raw, length = binary(x)
    with pytest.raises(InvalidInput, match="binary_data_size 16 but the body carries 12"):
        decode_rest(bytearray(raw[:-4]), length)
    with pytest.raises(InvalidInput, match="no Inference-Header-Content-Length"):
        decode_rest(bytearray(raw[:length]), None)
    with pytest.raises(InvalidInput, match="no input claims"):
        decode_rest(bytearray(body([1, 2, 3, 4]) + b"xx"), len(body([1, 2, 3, 4])))


def test_unknown_names_are_clipped_not_echoed() -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_rest(
            bytearray(body([1, 2, 3, 4]).replace(b'"input"', b'"' + b"A" * 5000 + b'"')), None
        )
    assert "A" * 100 not in str(caught.value)


def test_skeleton_outside_tensor_data_is_bounded() -> None:
    with pytest.raises(InvalidInput, match="outside tensor data"):
        jsonscan.split(body([1, 2, 3, 4], id="x" * (jsonscan.MAX_SKELETON + 10)))


def test_grpc_raw_and_typed_contents() -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    message = pb.ModelInferRequest(model_name="m", model_version="2", id="g")
    message.inputs.add(name="input", datatype="FP32", shape=[2, 4])
    message.raw_input_contents.append(x.tobytes())
    _, request = decode_grpc(message.SerializeToString())
    assert torch.equal(request.tensor, torch.from_numpy(x)) and request.version == "2"
    answer = pb.ModelInferResponse.FromString(encode_grpc("m", "2", request.tensor, request))
    assert answer.model_version == "2" and answer.id == "g"
    assert np.frombuffer(answer.raw_output_contents[0], "<f4").tolist() == x.ravel().tolist()
    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="input", datatype="FP32", shape=[2, 4]).contents.fp32_contents.extend(
        x.ravel().tolist()
    )
    assert torch.equal(decode_grpc(typed.SerializeToString())[1].tensor, torch.from_numpy(x))
    short = pb.ModelInferRequest(model_name="m")
    short.inputs.add(name="input", datatype="FP32", shape=[2, 4])
    short.raw_input_contents.append(x.tobytes()[:-4])
    with pytest.raises(InvalidInput, match="28 bytes of raw_input_contents"):
        decode_grpc(short.SerializeToString())
    with pytest.raises(InvalidInput, match="not a ModelInferRequest"):
        decode_grpc(b"\xff\xff\xff")


def test_infer_request_batch() -> None:
    assert InferRequest(torch.zeros(3, 4)).batch == 3
