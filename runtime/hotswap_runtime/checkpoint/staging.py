"""Reusable host buffers that checkpoints are parsed into.

Reusing them keeps a swap from allocating (and the process from growing) swap after
swap. On CUDA they are page-locked, so copies to the GPU run at full speed on a side
stream; allocating pinned memory is slow, which is one more reason to keep them.

A safetensors file's data section is read with one ``readinto`` into one flat buffer;
while the next checkpoint has the same layout (the usual case: same architecture) the
per-tensor views are reused too. Views are cached together with the buffer they view,
so a view can never outlive a reallocated buffer. A ``.pt`` file's tensors are copied
into one buffer per name. Buffers are only ever allocated at sizes a reader has
already checked against the model's layout and the file's size; after a failed swap
the swapper calls ``release`` so a rejected file leaves nothing allocated. On the CPU
the swapper does not copy a parsed flat buffer into the standby model: it points the
standby's tensors at it and takes the standby's old buffer back (``exchange``), so the
swap's "load" is a handful of pointer changes and the three buffers (serving, standby,
staging) rotate. The caller
must not parse the next checkpoint before the copies reading these buffers have
finished (the swapper synchronizes its copy stream first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hotswap_runtime.checkpoint.layouts import FlatLayout, StateDict
from hotswap_runtime.devices import release_pinned


@dataclass
class _Flat:
    buffer: torch.Tensor
    layout: FlatLayout | None = None
    views: StateDict = field(default_factory=dict)


class Staging:
    """Host buffers for parsed checkpoints, reused across swaps."""

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self._buffers: StateDict = {}
        self._flat: _Flat | None = None

    def flat(self, nbytes: int) -> torch.Tensor:
        """A byte buffer of exactly ``nbytes`` (checked by the caller), reused while the
        size stays the same. The previous one is dropped before a new one is allocated."""
        if self._flat is None or self._flat.buffer.numel() != nbytes:
            self._flat = None
            buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin)
            self._flat = _Flat(buffer)
        return self._flat.buffer

    def holds(self, buffer: torch.Tensor) -> bool:
        """Whether ``buffer`` is the current flat buffer."""
        return self._flat is not None and self._flat.buffer is buffer

    def exchange(self, given: torch.Tensor, back: torch.Tensor | None) -> None:
        """The current flat buffer ``given`` now belongs to a model (CPU: its tensors were
        pointed at it instead of copied); ``back``, the buffer that model let go of, is
        the next one parsed into (None: allocate one when needed)."""
        if not self.holds(given):
            raise RuntimeError("staging: only the current flat buffer can be handed over")
        self._flat = _Flat(back) if back is not None and back.numel() == given.numel() else None

    def views(self, layout: FlatLayout) -> StateDict:
        """The tensors of ``layout`` as views of the current flat buffer (a copy for a
        slot misaligned for its dtype)."""
        flat = self._flat
        if flat is None or flat.buffer.numel() != layout.nbytes:
            raise RuntimeError("staging: no flat buffer of this layout's size")
        if flat.layout != layout:
            flat.layout, flat.views = None, {}
            flat.views = {
                s.name: _view(flat.buffer, s.begin, s.end, s.dtype, s.shape) for s in layout.slots
            }
            flat.layout = layout
        return flat.views

    def buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A buffer for tensor ``name`` (a checked shape), reused while shape and dtype stay."""
        buffer = self._buffers.get(name)
        if buffer is None or tuple(buffer.shape) != shape or buffer.dtype != dtype:
            self._buffers.pop(name, None)
            buffer = torch.empty(shape, dtype=dtype, pin_memory=self.pin)
            self._buffers[name] = buffer
        return buffer

    def keep_only(self, names: set[str]) -> None:
        for name in set(self._buffers) - names:
            del self._buffers[name]

    def release(self) -> None:
        """Drop every buffer (after a failed swap); pinned blocks go back to the driver."""
        self._buffers = {}
        self._flat = None
        if self.pin:
            release_pinned()


def _view(
    flat: torch.Tensor, begin: int, end: int, dtype: torch.dtype, shape: tuple[int, ...]
) -> torch.Tensor:
    """Bytes ``[begin, end)`` of ``flat`` as a tensor: a view when aligned, else a copy."""
    raw = flat[begin:end]
    if begin % dtype.itemsize:
        return raw.clone().view(dtype).view(shape)  # misaligned: a copy (rare)
    return raw.view(dtype).view(shape)
