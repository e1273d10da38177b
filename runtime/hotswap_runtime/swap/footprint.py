"""What a forward pass costs in memory, and the forward batch that keeps it bounded.

A model's activation memory per sample is sized once, at load, on the probe that every
swap runs anyway (a batch of one, probes.py): a dispatch mode counts the bytes of every
tensor an op allocates (views and in-place results allocate nothing), subtracts them
when the tensor's storage is freed, and keeps the peak. That peak covers the batch's
output and what does not grow with the batch, so ``batch x peak`` bounds a forward
pass of ``batch`` samples; ``HEADROOM`` covers kernels' workspaces, which no tensor
shows (oneDNN convolutions: up to 1.5x on resnet50). Nothing runs on the serving path.

The bound, per inference worker, is its share of ``HOTSWAP_FORWARD_MEMORY_BYTES``:
half for the forward pass (``forward_batch`` x activation bytes per sample), half for
the answer of a request split into several passes (samples x FP32 output bytes per
sample), so that ``workers x (forward_batch x activation + answer)`` stays under it.
A model one sample of which does not fit is refused at load (``ModelTooLarge``).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from hotswap_runtime.errors import ModelTooLarge
from hotswap_runtime.settings import DEFAULT_FORWARD_MEMORY_BYTES, DEFAULT_MAX_FORWARD_BATCH

T = TypeVar("T")
HEADROOM = 2  # kernels' workspaces and allocator rounding, which no output tensor shows
ANSWER_ITEMSIZE = 4  # answers are FP32


@dataclass(frozen=True)
class Footprint:
    """What one revision's forward passes may hold, sized at load."""

    activation_bytes: int  # per sample: the probe's peak x HEADROOM
    output_bytes: int  # per sample of the FP32 answer
    forward_batch: int  # most samples in one forward pass
    max_answer_samples: int  # most samples one request's answer may hold

    def to_json(self) -> dict[str, int]:
        return {
            "activation_bytes_per_sample": self.activation_bytes,
            "output_bytes_per_sample": self.output_bytes,
            "forward_batch": self.forward_batch,
            "max_answer_samples": self.max_answer_samples,
        }


@dataclass(frozen=True)
class ForwardLimits:
    """The admin's bounds on forward passes (``HOTSWAP_MAX_FORWARD_BATCH``,
    ``HOTSWAP_FORWARD_MEMORY_BYTES``) and the workers that run them at once."""

    max_batch: int = DEFAULT_MAX_FORWARD_BATCH
    memory_bytes: int = DEFAULT_FORWARD_MEMORY_BYTES
    workers: int = 1

    @property
    def half_share(self) -> int:
        """Bytes one worker may spend on a forward pass, and as many on an answer."""
        return self.memory_bytes // self.workers // 2

    def footprint(self, peak: int, output_shape: tuple[int, ...], what: str) -> Footprint:
        """The forward batch for a model whose probe (a batch of one) peaked at ``peak``
        bytes and answered ``output_shape``; ModelTooLarge when one sample does not fit."""
        activation = max(1, HEADROOM * peak)
        output = max(1, ANSWER_ITEMSIZE * math.prod(output_shape[1:]))
        fits = self.half_share // activation
        if fits < 1:
            raise ModelTooLarge(
                f"{what}: a forward pass of one sample needs about {activation} bytes "
                f"(measured on the probe, x{HEADROOM} headroom), over the {self.half_share} "
                f"bytes each of {self.workers} inference workers may spend on one "
                "(half of HOTSWAP_FORWARD_MEMORY_BYTES / HOTSWAP_INFER_WORKERS); raise the "
                "chart value policy.forwardMemoryBytes or use fewer inference workers"
            )
        batch = min(self.max_batch, fits)
        return Footprint(activation, output, batch, max(batch, self.half_share // output))


def measure_peak(run: Callable[[], T]) -> tuple[T, int]:
    """``run()`` and the peak bytes of the tensors it allocated that were alive at once
    (its result included)."""
    meter = _PeakMeter()
    with meter:
        result = run()
    return result, meter.peak


class _PeakMeter(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Live and peak bytes of the tensors that ops allocate within the mode."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        for index, value in enumerate(tree_flatten(out)[0]):
            aliased = index < len(returns) and returns[index].alias_info is not None
            if isinstance(value, torch.Tensor) and not aliased:
                self._allocated(value)
        return out

    def _allocated(self, tensor: torch.Tensor) -> None:
        try:
            owner: object = tensor.untyped_storage()
            nbytes = int(owner.nbytes())  # type: ignore[attr-defined]
        except (RuntimeError, NotImplementedError):  # no storage (sparse, nested)
            owner, nbytes = tensor, tensor.numel() * tensor.element_size()
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(owner, self._freed, nbytes)

    def _freed(self, nbytes: int) -> None:
        self.live -= nbytes
