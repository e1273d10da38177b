"""Parse checkpoint files into state dicts, safely.

Only two formats are read: safetensors (no code at all) and PyTorch ``.pt``/``.pth``
files through ``torch.load(weights_only=True)``, whose unpickler only rebuilds tensors
and plain containers, so a pickle whose ``__reduce__`` would run code is refused
before anything runs. Every other file type is refused by name.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
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


def read_state_dict(path: Path, uri: str) -> StateDict:
    """The tensors in checkpoint ``path`` (fetched from ``uri``), on the CPU."""
    if checkpoint_format(uri) == SAFETENSORS:
        try:
            return dict(safetensors.torch.load_file(str(path), device="cpu"))
        except Exception as exc:
            raise FormatError(f"checkpoint {uri}: not a valid safetensors file: {exc}") from None
    return _state_dict(_torch_load(path, uri), uri)


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
    """Names of floating-point tensors holding NaN or infinity."""
    return [
        name
        for name, tensor in state.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def state_bytes(state: StateDict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def megabytes(n: int) -> float:
    return math.floor(n / 1e4) / 100
