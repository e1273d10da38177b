"""safetensors files, checked like the reference loader before tensor data is read.

The file is an 8-byte little-endian header length, a JSON header, and a data section.
Before anything is allocated for the data: the header length is bounded by what a
header for the expected tensors can need (``header_limit``) and by the file; the header
is strict UTF-8 JSON without duplicate keys, NaN literals or deep nesting; every entry
is checked as the Rust ``safetensors`` crate does (known dtype, shape of non-negative
integers, offsets that, sorted, run back to back from 0 to the end of the file, each
exactly its shape's size); and names, shapes and dtypes are compared with the model's
layout. Only then is the data read, with one ``readinto``, into a staging buffer of
exactly the data section's size.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from io import BufferedReader
from pathlib import Path
from typing import Any

import torch

from hotswap_contract.redact import clip
from hotswap_runtime.checkpoint.layouts import Expected, FlatLayout, Slot, StateDict
from hotswap_runtime.checkpoint.staging import Staging
from hotswap_runtime.checkpoint.weight_map import check_shards
from hotswap_runtime.errors import FormatError

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
MAX_HEADER_BYTES = 8 << 20  # whatever the model: a few MiB describe tens of thousands of tensors
METADATA_BYTES = 64 << 10  # room for __metadata__ and padding
ENTRY_BYTES = 128  # one entry's JSON besides its name and shape: dtype, two offsets, keys
DIM_BYTES = 24  # one dimension of a shape: up to 20 digits and separators
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


def header_limit(expected: Expected | None) -> int:
    """The largest header a file for ``expected`` can legitimately have (one small
    tensor of any name when nothing is expected)."""
    if expected is None:
        return METADATA_BYTES
    need = sum(
        len(json.dumps(name)) + ENTRY_BYTES + DIM_BYTES * len(spec.shape)
        for name, spec in expected.layout.items()
    )
    return min(MAX_HEADER_BYTES, METADATA_BYTES + need)


def read_flat(
    files: Sequence[tuple[Path, str]],
    expected: Expected,
    staging: Staging,
    owners: Mapping[str, int] | None = None,
) -> tuple[torch.Tensor, FlatLayout, StateDict]:
    """The data sections of ``files`` (path and redacted URI: one file, or the shards of
    a manifest in its order) back to back in a staging buffer, their checked layout,
    and the tensors as views of that buffer (by name). ``owners`` (a manifest's weight
    map: tensor -> index in ``files``) must say where each tensor is."""
    limit = header_limit(expected)
    parts: list[tuple[Path, str, int, FlatLayout]] = []
    for path, where in files:
        with _open(path, where) as (f, size, bad):
            layout = _layout(f, size, limit, bad)
            parts.append((path, bad, f.tell(), layout))
    if owners is not None:  # the one check a streamed checkpoint gets too (weight_map.py)
        check_shards([part[3] for part in parts], owners, [where for _, where in files])
    combined = concat([part[3] for part in parts], files[0][1] if len(files) == 1 else "")
    where = files[0][1] if len(files) == 1 else f"{files[0][1]} (and its other shards)"
    expected.check(combined.specs(), where)
    flat = staging.flat(combined.nbytes)
    base = 0
    for path, bad, start, layout in parts:
        with path.open("rb") as f:
            f.seek(start)
            _read_into(f, flat[base : base + layout.nbytes], bad)
        base += layout.nbytes
    return flat, combined, staging.views(combined)


def concat(layouts: Sequence[FlatLayout], where: str) -> FlatLayout:
    """Shards' layouts one after the other; a tensor in two shards is refused."""
    slots: list[Slot] = []
    seen: set[str] = set()
    base = 0
    for layout in layouts:
        for s in layout.slots:
            if s.name in seen:
                raise FormatError(
                    f"checkpoint {where or 'shards'}: tensor {clip(s.name, 100)!r} is in two shards"
                )
            seen.add(s.name)
            slots.append(Slot(s.name, s.dtype, s.shape, s.begin + base, s.end + base))
        base += layout.nbytes
    return FlatLayout(tuple(slots))


def read_single(path: Path, where: str) -> torch.Tensor:
    """The one tensor of a small safetensors file (validation inputs and outputs), in
    its own buffer of at most the file's size."""
    with _open(path, where) as (f, size, bad):
        layout = _layout(f, size, header_limit(None), bad)
        if len(layout.slots) != 1:
            raise FormatError(f"{where}: holds {len(layout.slots)} tensors, expected exactly one")
        flat = torch.empty(layout.nbytes, dtype=torch.uint8)
        _read_into(f, flat, bad)
    slot = layout.slots[0]
    return flat.view(slot.dtype).view(slot.shape) if slot.shape else flat.view(slot.dtype)[0]


@contextmanager
def _open(path: Path, where: str) -> Iterator[tuple[BufferedReader, int, str]]:
    bad = f"checkpoint {where}: not a valid safetensors file"
    with path.open("rb") as f:
        yield f, os.fstat(f.fileno()).st_size, bad


def _layout(f: BufferedReader, size: int, limit: int, bad: str) -> FlatLayout:
    head = f.read(8)
    if len(head) != 8:
        raise FormatError(f"{bad}: shorter than its 8-byte header length")
    length = struct.unpack("<Q", head)[0]
    if length > size - 8:
        raise FormatError(f"{bad}: header length {length} is past the end of the file")
    if length > limit:
        raise FormatError(
            f"{bad}: its header is {length} bytes, more than the {limit} bytes a header "
            "for this model's tensors can need"
        )
    header = strict_json_object(f.read(length), bad)
    return flat_layout(header, size - 8 - length, bad)


def strict_json_object(
    raw: bytes, bad: str, what: str = "header", error: type[FormatError] = FormatError
) -> dict[str, Any]:
    """``raw`` as a JSON object: UTF-8, no duplicate keys, no NaN literals, not too deep;
    else ``error`` starting with ``bad`` and naming the document ``what``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{bad}: {what} is not UTF-8") from None
    if not text.startswith("{"):
        raise error(f"{bad}: {what} is not a JSON object")
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except _DuplicateError as dup:
        raise error(f"{bad}: name {clip(dup.name, 100)!r} appears twice in the {what}") from None
    except (ValueError, RecursionError) as exc:
        raise error(f"{bad}: {what} is not JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise error(f"{bad}: {what} is not a JSON object")
    return doc


class _DuplicateError(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateError(key)
        out[key] = value
    return out


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def flat_layout(header: dict[str, Any], data_size: int, bad: str) -> FlatLayout:
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError(f"{bad}: __metadata__ is not a map of strings")
    slots = sorted(
        (_slot(name, info, bad) for name, info in header.items() if name != "__metadata__"),
        key=lambda s: (s.begin, s.end),
    )
    end = 0
    for slot in slots:
        if slot.begin != end:
            gap = "overlaps the tensor before it" if slot.begin < end else "leaves a hole"
            raise FormatError(
                f"{bad}: tensor {clip(slot.name, 100)!r} {gap} (offsets must run back to back)"
            )
        if slot.end - slot.begin != slot.spec.nbytes:
            raise FormatError(
                f"{bad}: tensor {clip(slot.name, 100)!r} has {slot.end - slot.begin} bytes "
                f"for shape {list(slot.shape)}, which needs {slot.spec.nbytes}"
            )
        end = slot.end
    if end != data_size:
        raise FormatError(f"{bad}: its tensors take {end} bytes of a {data_size}-byte data section")
    return FlatLayout(tuple(slots))


def _slot(name: str, info: Any, bad: str) -> Slot:
    what = f"{bad}: entry {clip(name, 100)!r}"
    if not isinstance(info, dict) or set(info) != _ENTRY_KEYS:
        raise FormatError(f"{what} must have exactly dtype, shape and data_offsets")
    dtype = DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is None:
        raise FormatError(f"{what} has an unknown dtype (known: {', '.join(DTYPES)})")
    shape, offsets = info["shape"], info["data_offsets"]
    if not _naturals(shape):
        raise FormatError(f"{what} has a shape that is not a list of non-negative integers")
    if not _naturals(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise FormatError(f"{what} has data_offsets that are not [begin, end] with begin <= end")
    return Slot(name, dtype, tuple(shape), offsets[0], offsets[1])


def _naturals(value: Any) -> bool:
    return isinstance(value, list) and all(type(item) is int and item >= 0 for item in value)


def _read_into(f: BufferedReader, flat: torch.Tensor, bad: str) -> None:
    view = memoryview(flat.numpy()).cast("B")  # type: ignore[arg-type]
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise FormatError(f"{bad}: the file ended while reading its tensors")
        done += n
