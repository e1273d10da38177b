"""Parse checkpoint files into state dicts, safely.

Only two formats are read: safetensors (no code at all) and PyTorch ``.pt``/``.pth``
files through ``torch.load(weights_only=True)``, whose unpickler only rebuilds tensors
and plain containers, so a pickle whose ``__reduce__`` would run code is refused
before anything runs. Every other file type is refused by name.
"""

from __future__ import annotations

import json
import math
import pickle
import struct
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import urlsplit

import safetensors.torch
import torch

from .errors import FormatError

StateDict = dict[str, torch.Tensor]

SAFETENSORS = "safetensors"
PYTORCH = "pytorch"
_SUFFIXES = {".safetensors": SAFETENSORS, ".pt": PYTORCH, ".pth": PYTORCH}


def checkpoint_format(uri: str) -> str:
    """The format named by the URI's file suffix, or FormatError saying what is allowed."""
    suffix = PurePosixPath(urlsplit(uri).path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise FormatError(
            f"checkpoint {uri}: file type {suffix or '(none)'!r} is refused; "
            "use .safetensors, or .pt/.pth readable by torch.load(weights_only=True)"
        )
    return _SUFFIXES[suffix]


class Buffers(Protocol):
    """Where parsed tensors go: reusable (and on CUDA pinned) host buffers."""

    def buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor: ...

    def keep_only(self, names: set[str]) -> None: ...

    def flat(self, nbytes: int) -> torch.Tensor: ...

    def views(self, layout: object) -> StateDict | None: ...

    def remember(self, layout: object, views: StateDict) -> None: ...


def read_state_dict(path: Path, uri: str, buffers: Buffers | None = None) -> StateDict:
    """The tensors in checkpoint ``path`` (fetched from ``uri``), on the CPU.

    With ``buffers``, tensors are read into those reusable buffers: safetensors data goes
    straight from the file into them (no temporary copy, the GIL released while reading).
    """
    if checkpoint_format(uri) == SAFETENSORS:
        if buffers is not None:
            return _read_safetensors_into(path, uri, buffers)
        try:
            return dict(safetensors.torch.load_file(str(path), device="cpu"))
        except Exception as exc:
            raise FormatError(f"checkpoint {uri}: not a valid safetensors file: {exc}") from None
    state = _state_dict(_torch_load(path, uri), uri)
    if buffers is None:
        return state
    staged = {}
    for name, tensor in state.items():
        staged[name] = buffers.buffer(name, tuple(tensor.shape), tensor.dtype)
        staged[name].copy_(tensor)
    buffers.keep_only(set(staged))
    return staged


_DTYPES = {
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
_MAX_HEADER = 100 * 1024 * 1024


def _read_safetensors_into(path: Path, uri: str, buffers: Buffers) -> StateDict:
    bad = f"checkpoint {uri}: not a valid safetensors file"
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise FormatError(f"{bad}: shorter than its 8-byte header length")
        length = struct.unpack("<Q", head)[0]
        if length > min(_MAX_HEADER, size - 8):
            raise FormatError(f"{bad}: header length {length} is past the end of the file")
        try:
            header = json.loads(f.read(length))
        except ValueError as exc:
            raise FormatError(f"{bad}: header is not JSON ({exc})") from None
        data_size = size - 8 - length
        entries = _entries(header, bad, data_size)
        flat = buffers.flat(data_size)
        if f.readinto(memoryview(flat.numpy())) != data_size:  # type: ignore[arg-type]
            raise FormatError(f"{bad}: the file ended while reading its tensors")
    layout = tuple(entries)
    views = buffers.views(layout)
    if views is None:
        views = {name: _view(flat, *info) for name, info in entries}
        buffers.remember(layout, views)
    return views


def _view(
    flat: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...], begin: int, end: int
) -> torch.Tensor:
    """Tensor ``[begin, end)`` of the flat byte buffer, as a view when aligned."""
    raw = flat[begin:end]
    itemsize = torch.empty((), dtype=dtype).element_size()
    if begin % itemsize:
        return raw.clone().view(dtype).view(shape)  # misaligned: a copy (rare)
    return raw.view(dtype).view(shape)


def _entries(
    header: object, bad: str, data_size: int
) -> list[tuple[str, tuple[torch.dtype, tuple[int, ...], int, int]]]:
    if not isinstance(header, dict):
        raise FormatError(f"{bad}: header is not a JSON object")
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{bad}: entry {name!r} has no valid dtype/shape/offsets") from None
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if not 0 <= begin <= end <= data_size or end - begin != nbytes:
            raise FormatError(
                f"{bad}: tensor {name!r} has offsets [{begin}, {end}) that do "
                f"not fit its shape {list(shape)} or the file"
            )
        entries.append((name, (dtype, shape, begin, end)))
    entries.sort(key=lambda item: item[1][2])
    return entries


def read_tensor(path: Path, uri: str) -> torch.Tensor:
    """The single tensor stored in ``path`` (validation inputs and expected outputs)."""
    tensors = read_state_dict(path, uri)
    if len(tensors) != 1:
        raise FormatError(f"{uri}: expected exactly one tensor, found keys {sorted(tensors)}")
    return next(iter(tensors.values()))


def _torch_load(path: Path, uri: str) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FormatError(
            f"checkpoint {uri}: refused by torch.load(weights_only=True), it holds "
            f"objects other than tensors ({first}); save a plain state_dict or use safetensors"
        ) from None
    except Exception as exc:
        raise FormatError(
            f"checkpoint {uri}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})"
        ) from None


def _state_dict(loaded: object, uri: str) -> StateDict:
    if isinstance(loaded, Mapping) and set(loaded) == {"state_dict"}:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise FormatError(f"checkpoint {uri}: holds a {type(loaded).__name__}, not a state_dict")
    bad = [str(k) for k, v in loaded.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise FormatError(f"checkpoint {uri}: entries that are not tensors: {bad[:5]}")
    return {str(k): v for k, v in loaded.items()}


def non_finite_keys(state: StateDict) -> list[str]:
    """Names of floating-point tensors holding NaN or infinity.

    One ``_foreach_norm`` (max-abs, which NaN and inf survive) per dtype screens every
    tensor in a few calls; only a failing screen looks at tensors one by one.
    """
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for tensor in state.values():
        if tensor.is_floating_point() and tensor.numel():
            groups.setdefault(tensor.dtype, []).append(tensor)
    clean = all(
        bool(torch.stack(torch._foreach_norm(group, math.inf)).isfinite().all())
        for group in groups.values()
    )
    if clean:
        return []
    return [
        name
        for name, tensor in state.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def state_bytes(state: StateDict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def megabytes(n: int) -> float:
    return math.floor(n / 1e4) / 100
