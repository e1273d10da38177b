"""JSON infer bodies read in small steps: big number arrays never hold the GIL for long.

``orjson.loads`` of a 64 MB body holds the GIL for a quarter of a second and builds a
Python float per number (about eight times the body in memory). Here the body is split
first: every array of numbers under a ``"data"`` key is cut out (its place in the
skeleton holds a placeholder string) and the small skeleton left over is parsed by
orjson. Each cut array is then read in chunks of about ``CHUNK`` bytes straight into a
preallocated numpy array, so between chunks other threads (the event loop answering
``/v2/health/*``) run, and only one chunk's Python floats exist at a time.

A cut array holds only JSON number characters, commas, brackets and whitespace, starts
with ``[``, ends with the ``]`` that closes it (bracket depth never returns to zero
before), and its nesting depth is recorded so the caller can hold it to the shape's
rank. Brackets become spaces before a chunk is parsed, so ``[1][2]`` cannot pass as
``[1, 2]`` (``1  2`` is not JSON) while ``[[1, 2], [3, 4]]`` reads as four numbers.
Anything else under ``"data"`` (strings, booleans, an irregular array) stays in the
skeleton, where orjson reads it as usual and the skeleton's size bound applies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from hotswap_runtime.errors import InvalidInput

CHUNK = 1 << 20  # bytes of a body scanned or parsed in one step
MAX_SKELETON = 1 << 20  # bytes of JSON outside the cut-out number arrays
_MAX_TRAILING = 4096  # whitespace and commas after a cut array before its object goes on
_PLACEHOLDER = "\x00hotswap-data-"
_DATA_VALUE = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*\[")
_NUMERIC = re.compile(rb"[0-9eE.+\-, \t\r\n\[\]]*")
_BRACKETS_TO_SPACES = bytes.maketrans(b"[]", b"  ")


@dataclass(frozen=True)
class NumberSpan:
    """A JSON array of numbers cut out of a body: ``body[start:end]``."""

    start: int
    end: int
    depth: int  # deepest bracket nesting, 1 for a flat array


def span_of(value: object, spans: list[NumberSpan]) -> NumberSpan | None:
    """The cut array that ``value`` (from the skeleton) stands for, if it is a placeholder."""
    if isinstance(value, str) and value.startswith(_PLACEHOLDER):
        index = value[len(_PLACEHOLDER) :]
        if index.isdigit() and int(index) < len(spans):
            return spans[int(index)]
    return None


def split(
    body: bytes | bytearray, end: int | None = None, max_skeleton: int = MAX_SKELETON
) -> tuple[Any, list[NumberSpan]]:
    """Parse ``body[:end]`` with its number arrays under ``"data"`` cut out (module doc)."""
    end = len(body) if end is None else end
    if end == 0:
        raise InvalidInput("the request body is empty; send an infer request as JSON")
    parts: list[bytes] = []
    spans: list[NumberSpan] = []
    last = pos = cut = 0
    while True:
        quote = body.find(b'"', pos, end)
        if quote < 0:
            break
        close = _string_end(body, quote, end, max_skeleton)
        if close < 0:
            break  # unterminated: orjson names the error below
        pos = close
        if close - quote == 6 and body[quote:close] == b'"data"':
            found = _DATA_VALUE.match(body, close, end)
            if found is not None:
                start = found.end() - 1
                span = _number_array(body, start, end)
                if span is not None:
                    parts.append(bytes(body[last:start]))
                    parts.append(f'"\\u0000hotswap-data-{len(spans)}"'.encode())
                    spans.append(span)
                    cut += span.end - span.start
                    last = pos = span.end
        if pos - cut > max_skeleton:
            raise _too_big(max_skeleton)
    if end - cut > max_skeleton:
        raise _too_big(max_skeleton)
    if spans:
        parts.append(bytes(body[last:end]))
        text: bytes | memoryview = b"".join(parts)
    else:
        text = memoryview(body)[:end]
    try:
        skeleton = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {_where(exc)}") from None
    return skeleton, spans


def read_numbers(
    body: bytes | bytearray, span: NumberSpan, out: np.ndarray[Any, Any], what: str
) -> None:
    """Fill ``out`` (flat) with the numbers of ``span``; they must fill it exactly."""
    filled = 0
    start = span.start
    while start < span.end:
        stop = min(start + CHUNK, span.end)
        if stop < span.end:
            comma = body.find(b",", stop, span.end)
            stop = span.end if comma < 0 else comma
        piece = bytes(body[start:stop]).translate(_BRACKETS_TO_SPACES)
        try:
            values = orjson.loads(b"[" + piece + b"]")
        except orjson.JSONDecodeError:
            raise InvalidInput(f"{what}: data is not an array of numbers") from None
        count = len(values)
        if count == 0:
            raise InvalidInput(f"{what}: data holds an empty array")
        if filled + count > out.size:
            raise InvalidInput(f"{what}: data holds more values than the shape's {out.size}")
        try:
            out[filled : filled + count] = values
        except (TypeError, ValueError, OverflowError):
            raise InvalidInput(f"{what}: data holds a number out of range") from None
        filled += count
        start = stop + 1
    if filled != out.size:
        raise InvalidInput(f"{what}: {filled} values do not fill the shape's {out.size}")


def dumps_numbers(array: np.ndarray[Any, Any]) -> bytes:
    """A JSON array of ``array``'s values (flattened), encoded a chunk at a time."""
    flat = np.ascontiguousarray(array).reshape(-1)
    step = max(1, CHUNK // 16)
    if flat.size <= step:
        return orjson.dumps(flat, option=orjson.OPT_SERIALIZE_NUMPY)
    pieces = [
        orjson.dumps(flat[i : i + step], option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
        for i in range(0, flat.size, step)
    ]
    return b"[" + b",".join(pieces) + b"]"


def _string_end(view: bytes | bytearray, quote: int, end: int, limit: int) -> int:
    """Index after the string literal opening at ``quote``, or -1 if it never closes."""
    at = quote + 1
    while True:
        close = view.find(b'"', at, end)
        if close < 0:
            return -1
        if close - quote > limit:
            raise _too_big(limit)
        back = close - 1
        while back > quote and view[back] == 0x5C:  # backslash
            back -= 1
        if (close - 1 - back) % 2 == 0:
            return close + 1
        at = close + 1


def _number_array(view: bytes | bytearray, start: int, size: int) -> NumberSpan | None:
    """The array of numbers opening at ``start``, or None if it is anything else."""
    end = start
    while True:
        stop = min(end + CHUNK, size)
        matched = _NUMERIC.match(view, end, stop)
        end = matched.end() if matched else end
        if end < stop or stop == size:
            break
    close = end
    while close > start and view[close - 1] in b" \t\r\n,":
        close -= 1
        if end - close > _MAX_TRAILING:
            return None
    if close - start < 2 or view[close - 1] != ord("]"):
        return None
    depth = _depth(view, start, close)
    return None if depth is None else NumberSpan(start, close, depth)


def _depth(view: bytes | bytearray, start: int, end: int) -> int | None:
    """Deepest nesting of ``view[start:end]``, or None unless its first bracket's depth
    returns to zero exactly at its last byte (one array, balanced)."""
    level = 0
    deepest = 0
    for at in range(start, end, CHUNK):
        stop = min(at + CHUNK, end)
        chunk = np.frombuffer(view, np.uint8, stop - at, at)
        where = np.flatnonzero((chunk == 0x5B) | (chunk == 0x5D))
        if not where.size:
            if level <= 0:
                return None
            continue
        steps = np.where(chunk[where] == 0x5B, 1, -1).astype(np.int64)
        levels = np.cumsum(steps) + level
        closes_at = where[levels == 0]
        if closes_at.size and (closes_at.size > 1 or at + int(closes_at[0]) != end - 1):
            return None
        if levels.min() < 0:
            return None
        deepest = max(deepest, int(levels.max()))
        level = int(levels[-1])
    return deepest if level == 0 else None


def _too_big(limit: int) -> InvalidInput:
    return InvalidInput(
        f"the JSON outside tensor data is over {limit} bytes; send long values as "
        'tensor data (numbers under "data", or binary tensor data)'
    )


def _where(exc: orjson.JSONDecodeError) -> str:
    return f"{exc.msg} at byte {exc.pos}"
