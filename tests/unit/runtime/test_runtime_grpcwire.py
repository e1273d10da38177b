"""The wire scan of ModelInferRequest: what parsing will cost, read before parsing."""

from __future__ import annotations

import ctypes
import gc
import time
from pathlib import Path

import numpy as np
import pytest

from hotswap_runtime.errors import InvalidInput
from hotswap_runtime.serving import grpcwire
from hotswap_runtime.serving.codec import decode_grpc
from hotswap_runtime.serving.grpc_v2 import inference_pb2 as pb
from hotswap_runtime.serving.grpcwire import parse_cost

MIB = 1 << 20


def raw_request(nbytes: int, **fields: object) -> bytes:
    message = pb.ModelInferRequest(model_name="tiny", id="r1", **fields)  # type: ignore[arg-type]
    message.inputs.add(name="input", datatype="FP32", shape=[nbytes // 16, 4])
    message.outputs.add(name="output").parameters["binary_data"].bool_param = True
    message.raw_input_contents.append(b"\0" * nbytes)
    return message.SerializeToString()


def typed_request(values: int) -> bytes:
    message = pb.ModelInferRequest(model_name="tiny")
    tensor = message.inputs.add(name="input", datatype="FP32", shape=[values // 4, 4])
    tensor.contents.fp32_contents.extend(np.arange(values, dtype=np.float32).tolist())
    return message.SerializeToString()


def test_a_raw_request_costs_the_message_and_the_tensor() -> None:
    """The raw input is read in place: its bytes are held once and copied once."""
    raw = raw_request(16 * MIB)
    cost = parse_cost(raw)
    assert 2 * len(raw) <= cost <= 2 * len(raw) + 4096
    decode_grpc(raw)  # and it is a request decoding accepts


def test_typed_contents_cost_their_tensor_too() -> None:
    raw = typed_request(1 << 16)
    assert parse_cost(raw) >= 2 * len(raw) + 4 * (1 << 16)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"\x2a\x00" * 1000, "exactly one input tensor"),
        (b"\x3a\x00" * 1000, "raw_input_contents has 2 entries"),
        (b"\x32\x00" * 1000, "this model gives one, 'output'"),
        (b"\x22\x00" * 1000, "the request's parameters have more than 64 entries"),
        (b"\x2a\x05\x1a\x03\x01\x01\x01" + b"\x7a\x00" * 5000, "more than 4096 fields"),
        (b"\x2a\x0c\x1a\x0a" + b"\x01" * 10, "shape must be a list of 1 to 9"),
        (b"\x2a\x14" + b"\x18\x01" * 10, "shape must be a list of 1 to 9"),
        (b"\x2a\x04\x2a\x02\x08\x01", "this model takes FP32 tensors"),  # bool_contents
        (b"\x2a\x04\x2a\x02\x42\x00", "this model takes FP32 tensors"),  # bytes_contents
        (b"\x2a\x82\x01" + b"\x22\x00" * 65, "input 'input' parameters have more than 64"),
        (b"\x32\x82\x01" + b"\x12\x00" * 65, "output 'output' parameters have more than 64"),
        (b"\x0b", "not a ModelInferRequest"),  # a group
        (b"\x0a\x05abc", "not a ModelInferRequest"),  # a length past the end
        (b"\x08\xff", "not a ModelInferRequest"),  # a varint cut off
        (b"\x3d\x00\x00", "not a ModelInferRequest"),  # fixed32 cut off
    ],
)
def test_messages_this_runtime_never_serves_are_refused_before_parsing(
    raw: bytes, says: str
) -> None:
    with pytest.raises(InvalidInput, match=says):
        parse_cost(raw)


def test_what_passes_costs_at_least_what_protobuf_allocates() -> None:
    """Entries just under each limit: the charge covers upb's objects (measured per
    entry: inputs 89 B, outputs 48 B, parameters 40-157 B, bytes 33 B, shape 16 B)."""
    message = pb.ModelInferRequest(model_name="tiny")
    tensor = message.inputs.add(name="input", datatype="FP32", shape=[1] * 9)
    for index in range(grpcwire.MAX_PARAMETERS):
        message.parameters[f"p{index}"].int64_param = index
        tensor.parameters[f"q{index}"].bool_param = True
    for _ in range(grpcwire.MAX_OUTPUTS):
        message.outputs.add(name="output")
    raw = message.SerializeToString()
    floor = 2 * len(raw) + 128 * 157 + 8 * 48 + 89 + 9 * 16
    assert parse_cost(raw) >= floor


def test_unknown_fields_are_charged_as_bytes() -> None:
    """upb keeps unknown fields as their bytes: held, copied out to parse, and kept."""
    raw = raw_request(1024)
    unknown = b"\x7a\x00" * 100 + b"\x78\x01" * 100
    assert parse_cost(raw + unknown) == parse_cost(raw) + 3 * len(unknown)


def test_the_scan_is_cheap_for_a_256_mib_and_a_small_message() -> None:
    """O(fields), not O(bytes): a 256 MiB message scans about as fast as a small one."""
    big, small = raw_request(256 * MIB), raw_request(64)

    def seconds(raw: bytes) -> float:
        began = time.perf_counter()
        for _ in range(200):
            parse_cost(raw)
        return (time.perf_counter() - began) / 200

    small_s, big_s = seconds(small), seconds(big)
    assert big_s < 5 * small_s + 1e-4, (big_s, small_s)
    assert small_s < 1e-3


@pytest.mark.parametrize("kind", ["raw", "typed"])
def test_decoding_costs_no_more_than_the_scan_charged(kind: str) -> None:
    """Peak RSS while decode_grpc parses and copies out the tensor stays within what
    parse_cost charged beyond the message itself (held before decoding starts)."""
    raw = raw_request(16 * MIB) if kind == "raw" else typed_request(4 << 20)
    charged = parse_cost(raw) - len(raw)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    message, request = decode_grpc(raw)
    growth = _status("VmHWM") - before
    del message, request
    assert growth <= charged + 4 * MIB, f"decoding took {growth >> 20} MiB, charged {charged >> 20}"


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)
