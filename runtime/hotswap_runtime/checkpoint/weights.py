"""Parse checkpoint files into state dicts, safely.

Only two formats are read: safetensors (no code at all; ``safetensors_reader.py``) and
the zip archives ``torch.save`` writes, through ``torch.load(weights_only=True,
mmap=True)`` after the archive and its pickle were inspected (``torch_reader.py``).
Every other file type is refused by name.

A checkpoint is read against the layout the target model has (``layouts.Expected``):
names, shapes and dtypes are compared before any tensor data is allocated, and the
allocations that follow (the staging buffers) are exactly the checked sizes. A tensor
of another dtype than the model's is refused, unless ``model.castWeights`` allows it,
in which case it is cast while staging. Validation tensors (one tensor per file, no
layout) are bounded by the file's size instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import torch

from hotswap_contract.redact import redact_uri
from hotswap_runtime.checkpoint.layouts import Expected, FlatLayout, StateDict
from hotswap_runtime.checkpoint.manifest import LocalCheckpoint
from hotswap_runtime.checkpoint.safetensors_file import read_flat, read_single
from hotswap_runtime.checkpoint.staging import Staging
from hotswap_runtime.checkpoint.torch_file import load_checked
from hotswap_runtime.errors import FormatError

SAFETENSORS = "safetensors"
PYTORCH = "pytorch"
SHARDED = "sharded"  # a manifest of safetensors shards (manifest.py)
_SUFFIXES = {".safetensors": SAFETENSORS, ".pt": PYTORCH, ".pth": PYTORCH, ".json": SHARDED}


def checkpoint_format(uri: str) -> str:
    """The format named by the URI's file suffix, or FormatError saying what is allowed."""
    suffix = PurePosixPath(urlsplit(uri).path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise FormatError(
            f"checkpoint {redact_uri(uri)}: file type {suffix[:16] or '(none)'!r} is refused; "
            "use .safetensors, .json (a manifest of safetensors shards), or .pt/.pth "
            "readable by torch.load(weights_only=True)"
        )
    return _SUFFIXES[suffix]


@dataclass(frozen=True)
class Parsed:
    """A checked checkpoint in staging buffers. ``flat`` is set when every tensor of
    ``state`` is an aligned view of that one buffer, laid out as ``flat_layout`` (a
    safetensors file in the model's dtypes): then it can be copied in one piece."""

    state: StateDict
    flat: torch.Tensor | None = None
    flat_layout: FlatLayout | None = None


def read_state_dict(path: Path, uri: str, expected: Expected, staging: Staging) -> Parsed:
    """The tensors of checkpoint ``path`` (fetched from ``uri``), checked against
    ``expected`` and staged in ``staging``'s buffers, in the model's dtypes."""
    where = redact_uri(uri)
    if checkpoint_format(uri) == SAFETENSORS:
        return _safetensors(((path, where),), expected, staging, None)
    loaded = load_checked(path, where, expected)
    staged = {}
    for name, spec in expected.layout.items():
        staged[name] = staging.buffer(name, spec.shape, spec.dtype)
        with torch.no_grad():
            staged[name].copy_(loaded.pop(name))  # casts only where the check allowed it
    staging.keep_only(set(staged))
    return Parsed(staged)


def read_local(local: LocalCheckpoint, uri: str, expected: Expected, staging: Staging) -> Parsed:
    """``read_state_dict`` for a fetched checkpoint: one file, or a manifest's shards
    (their data back to back in one staging buffer, each tensor where the manifest says)."""
    if local.manifest is None:
        return read_state_dict(local.files[0][0], uri, expected, staging)
    return _safetensors(local.files, expected, staging, local.manifest.owners)


def _safetensors(
    files: Sequence[tuple[Path, str]],
    expected: Expected,
    staging: Staging,
    owners: Mapping[str, int] | None,
) -> Parsed:
    flat, layout, views = read_flat(files, expected, staging, owners)
    state = {name: views[name] for name in expected.layout}
    cast = [name for name, spec in expected.layout.items() if state[name].dtype != spec.dtype]
    for name in cast:  # allowed by the check: a copy in the model's dtype
        state[name] = state[name].to(expected.layout[name].dtype)
    if cast or not all(slot.aligned for slot in layout.slots):
        return Parsed(state)
    return Parsed(state, flat, layout)


def read_tensor(path: Path, uri: str) -> torch.Tensor:
    """The single tensor stored in ``path`` (validation inputs and expected outputs), in
    memory of its own (at most the file's size)."""
    where = redact_uri(uri)
    kind = checkpoint_format(uri)
    if kind == SHARDED:
        raise FormatError(f"{where}: a validation tensor must be one .safetensors or .pt file")
    if kind == SAFETENSORS:
        return read_single(path, where)
    tensors = load_checked(path, where, None)
    if len(tensors) != 1:
        raise FormatError(f"{where}: holds {len(tensors)} tensors, expected exactly one")
    return next(iter(tensors.values())).clone(memory_format=torch.contiguous_format)
