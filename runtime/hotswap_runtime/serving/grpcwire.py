"""What a serialized ModelInferRequest will cost to parse, read from its wire format
before protobuf parses it.

Parsed protobuf objects can be much larger than their bytes on the wire: an empty
``inputs`` entry is 2 bytes on the wire and about 89 bytes in upb's arena, so a 96 MB
message of them parses into gigabytes. ``scan`` walks the message's fields (tags and
lengths only: a field's bytes are skipped, never copied), counts the entries that
become objects, and answers the bytes the message costs to hold and decode (the
message; twice the rest beside the raw input, which ``codec.decode_grpc`` copies out
and protobuf copies again; one object per entry; the decoded tensor) and where the raw
input lies, so that it is read in place. It refuses at once, before anything is
allocated, what this runtime never serves (it takes one FP32 input named ``input``):
more than one input or ``raw_input_contents`` entry, more outputs or parameters than a
request needs, a shape of more than 9 dimensions, typed contents other than
``fp32_contents``, groups, and messages of more than ``MAX_FIELDS`` fields. The usual
message (raw_input_contents) is about a dozen fields, so the walk takes microseconds
whatever the tensor's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from hotswap_runtime.errors import InvalidInput

MAX_FIELDS = 4096  # fields walked in all, sub-messages included
MAX_OUTPUTS = 8
MAX_PARAMETERS = 64  # entries of one parameters map
MAX_RANK = 9  # batch + the 8 dimensions a ModelSpec's inputShape may have

# Bytes of upb's arena per parsed entry (protobuf 6, upb; measured with 1M entries,
# rounded up): a map entry with its key and InferParameter value, an InferInputTensor,
# an InferRequestedOutputTensor, a bytes entry, a shape value (arrays grow by doubling).
PER_PARAMETER = 192
PER_INPUT = 96
PER_OUTPUT = 64
PER_BYTES_ENTRY = 48
PER_SHAPE_VALUE = 16
PER_FP32_VALUE = 8  # unpacked: 5 bytes on the wire, an array that doubles as it grows

NOT_A_REQUEST = "the message is not a ModelInferRequest"
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class _Fields:
    """Walks fields of ``data``; every field counts against one budget of ``MAX_FIELDS``
    shared with the sub-messages walked from it."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.steps = 0

    def walk(self, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
        """(field number, wire type, value start, value end) of each field of
        ``data[start:end]`` in order; a length-delimited value without its length."""
        data, pos = self.data, start
        while pos < end:
            self.steps += 1
            if self.steps > MAX_FIELDS:
                raise InvalidInput(
                    f"the ModelInferRequest has more than {MAX_FIELDS} fields; a request "
                    "needs a few dozen (send the tensor as raw_input_contents, or as "
                    "packed fp32_contents)"
                )
            key, pos = (data[pos], pos + 1) if data[pos] < 0x80 else self.varint(pos, end)
            wire = key & 7
            if wire == LENGTH:
                length, pos = self.varint(pos, end)
                after = pos + length
            elif wire == VARINT:
                after = self.varint(pos, end)[1]
            elif wire in (FIXED64, FIXED32):
                after = pos + (8 if wire == FIXED64 else 4)
            else:  # groups (3, 4) and the unused types 6, 7
                raise InvalidInput(NOT_A_REQUEST)
            if after > end:
                raise InvalidInput(NOT_A_REQUEST)
            yield key >> 3, wire, pos, after
            pos = after

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        """The varint at ``pos`` and the position after it."""
        if pos < end and self.data[pos] < 0x80:  # tags and short lengths: one byte
            return self.data[pos], pos + 1
        result = shift = 0
        for index in range(pos, min(pos + 10, end)):
            byte = self.data[index]
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result, index + 1
            shift += 7
        raise InvalidInput(NOT_A_REQUEST)


@dataclass(frozen=True)
class RawInput:
    """Where the one ``raw_input_contents`` entry lies in the message: the field
    (tag and length) starts at ``field``, its bytes are ``[start, end)``."""

    field: int
    start: int
    end: int


@dataclass(frozen=True)
class Scan:
    """What reading the wire format found."""

    cost: int  # bytes holding and decoding the message takes
    raw_input: RawInput | None


@dataclass
class _Count:
    """What the walk found, in bytes of cost beyond the message's own."""

    objects: int = 0  # bytes of parsed objects
    tensor: int = 0  # bytes of the decoded FP32 tensor
    inputs: int = 0
    raw_inputs: int = 0
    outputs: int = 0
    raw_input: RawInput | None = None


def parse_cost(raw: bytes) -> int:
    """Bytes that holding and decoding the serialized ModelInferRequest ``raw`` takes,
    or InvalidInput for a message this runtime refuses before parsing it."""
    return scan(raw).cost


def scan(raw: bytes) -> Scan:
    """Read ``raw``'s wire format: the cost of holding and decoding it, and where its
    raw input lies; InvalidInput for a message this runtime refuses before parsing.

    The cost: the message, which stays held until the answer is sent; twice everything
    but the raw input (``codec.decode_grpc`` copies the rest out to parse it, and
    protobuf copies its strings and bytes); one object per entry; the decoded tensor.
    """
    fields = _Fields(raw)
    count = _Count()
    previous = 0
    parameters = 0
    for number, wire, start, end in fields.walk(0, len(raw)):
        field, previous = previous, end
        if wire != LENGTH:
            continue  # unknown scalars: kept as bytes, counted with the message
        if number == 4:
            parameters += 1
            _check_parameters(parameters, "the request's parameters")
        elif number == 5:
            count.inputs += 1
            _check_inputs(count.inputs)
            _input(fields, start, end, count)
        elif number == 6:
            count.outputs += 1
            _output(fields, start, end, count)
        elif number == 7:
            count.raw_inputs += 1
            _check_raw_inputs(count.raw_inputs)
            count.tensor = end - start
            count.raw_input = RawInput(field, start, end)
    count.objects += (
        parameters * PER_PARAMETER
        + count.inputs * PER_INPUT
        + count.outputs * PER_OUTPUT
        + count.raw_inputs * PER_BYTES_ENTRY
    )
    held = count.raw_input
    rest = len(raw) - (held.end - held.start if held else 0)
    return Scan(len(raw) + 2 * rest + count.objects + count.tensor, count.raw_input)


def _input(fields: _Fields, start: int, end: int, count: _Count) -> None:
    parameters = values = 0
    for number, wire, begin, stop in fields.walk(start, end):
        if number == 3:
            values += _shape_values(fields, wire, begin, stop)
            if values > MAX_RANK:
                raise InvalidInput(
                    f"input 'input': shape must be a list of 1 to {MAX_RANK} non-negative integers"
                )
        elif number == 4 and wire == LENGTH:
            parameters += 1
            _check_parameters(parameters, "input 'input' parameters")
        elif number == 5 and wire == LENGTH:
            _contents(fields, begin, stop, count)
    count.objects += parameters * PER_PARAMETER + values * PER_SHAPE_VALUE


def _shape_values(fields: _Fields, wire: int, start: int, end: int) -> int:
    if wire != LENGTH:
        return 1
    if end - start > 10 * MAX_RANK:  # each value at most 10 bytes
        return MAX_RANK + 1
    return sum(1 for byte in fields.data[start:end] if byte < 0x80)


def _contents(fields: _Fields, start: int, end: int, count: _Count) -> None:
    for number, wire, begin, stop in fields.walk(start, end):
        if number != 6:
            raise InvalidInput(
                "input 'input': this model takes FP32 tensors; send the data as "
                "raw_input_contents or fp32_contents"
            )
        if wire == LENGTH:
            count.tensor += stop - begin
        else:
            count.tensor += 4
            count.objects += PER_FP32_VALUE


def _output(fields: _Fields, start: int, end: int, count: _Count) -> None:
    if count.outputs > MAX_OUTPUTS:
        raise InvalidInput(
            f"the request names {count.outputs} outputs or more; this model gives one, "
            "'output' (name it at most once)"
        )
    parameters = 0
    for number, wire, _, _ in fields.walk(start, end):
        if number == 2 and wire == LENGTH:
            parameters += 1
            _check_parameters(parameters, "output 'output' parameters")
    count.objects += parameters * PER_PARAMETER


def _check_inputs(inputs: int) -> None:
    if inputs > 1:
        raise InvalidInput(
            "this model takes exactly one input tensor, 'input'; the request has more"
        )


def _check_raw_inputs(entries: int) -> None:
    if entries > 1:
        raise InvalidInput(f"raw_input_contents has {entries} entries or more for 1 input")


def _check_parameters(entries: int, what: str) -> None:
    if entries > MAX_PARAMETERS:
        raise InvalidInput(
            f"{what} have more than {MAX_PARAMETERS} entries; this runtime reads none of "
            "them but binary_data_output and binary_data"
        )
