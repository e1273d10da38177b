"""A frozen graph of a network, served in its place where it is faster (``HOTSWAP_FREEZE``).

PyTorch's eager convolutions on the CPU reorder their weights into oneDNN's blocked
layout at every call and run batch norm as a pass of its own. A frozen TorchScript graph
(``torch.jit.freeze`` then ``optimize_for_inference``) folds batch norm into the
convolutions and keeps their weights prepacked. Which is faster depends on the batch:
resnet18 at 3x64x64 with one torch thread, channels-last, answers batch 1 faster eagerly
and batches 8 and 32 faster frozen (docs/architecture.md, "Serving interface").

Under ``auto`` (the default), for a 2-D convolutional float32 network on the CPU taking
one image per sample, at most ``MAX_BYTES`` of tensors, that TorchScript compiles and
whose graph answers a seeded probe as the network does (within float32 rounding): both
are timed at batches of 1, 2, 4 ... ``TIMED_UP_TO`` samples, and a forward pass runs on
the graph at the sizes where it was faster (a size between two timed ones as the
smaller; above the largest as the largest). Timing stops at the next size once it took
``TIMING_SECONDS``. A graph faster at no size is dropped.
Anything else, or ``off``, serves the network. The timings of one model spec are kept
for its later revisions: weights do not change which is faster.

The graph is built from the loaded and validated network before it is activated, off
the serving path, once per revision; it holds its own (folded, prepacked) copy of the
convolutions' weights, so a serving revision costs up to twice its tensors' bytes. An
in-place swap serves the network: a graph would still hold the old weights.

TorchScript is deprecated in favour of ``torch.compile``, which needs a C++ compiler in
the pod and compiles for tens of seconds; where this torch cannot script or freeze a
network, ``auto`` serves it and says why in the log.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from hotswap_contract.wire import ModelSpec
from hotswap_runtime.swap.models import torch_dtype

log = logging.getLogger(__name__)

MAX_BYTES = 1024**3  # a larger network serves eagerly: the graph's copy would cost as much
TIMED_UP_TO = 32  # samples: the largest batch timed
TIMINGS = 3  # calls of each per batch size, interleaved; the fastest counts
TIMING_SECONDS = 3.0  # no larger size is timed once this much time went to timing
PROBE_SEED = 20261207
RTOL = 1e-4  # of the eager answer's largest magnitude: float32 rounding of folded BN

Network = nn.Module | torch.jit.ScriptModule


@dataclass(frozen=True)
class Frozen:
    """A revision's graph and the batch sizes (powers of two) it serves."""

    graph: torch.jit.ScriptModule
    sizes: frozenset[int]
    largest: int = TIMED_UP_TO  # the largest size timed

    def serves(self, samples: int) -> bool:
        """Whether a forward pass of ``samples`` runs on the graph."""
        timed = min(1 << (max(samples, 1).bit_length() - 1), self.largest)
        return timed in self.sizes


def freezable(module: nn.Module, spec: ModelSpec, device: torch.device, nbytes: int) -> bool:
    """Whether ``auto`` tries a frozen graph for ``module``: measured cases only."""
    return (
        device.type == "cpu"
        and len(spec.input_shape) == 3
        and torch_dtype(spec) == torch.float32
        and nbytes <= MAX_BYTES
        and any(isinstance(m, nn.Conv2d) for m in module.modules())
    )


class Freezer:
    """Builds each revision's graph under one setting on one device, and keeps the batch
    sizes timed for the last model spec (found faster at none: not timed again)."""

    def __init__(self, setting: str, device: torch.device) -> None:
        self.setting = setting
        self.device = device
        self._timed: tuple[ModelSpec, frozenset[int], int] | None = None  # sizes, largest

    def __call__(
        self, module: nn.Module, spec: ModelSpec, nbytes: int, limit: int, what: str
    ) -> Frozen | None:
        """``module``'s graph, checked and warmed, and the sizes it serves (timed at most
        ``limit`` samples a pass); None: serve the network."""
        if self.setting == "off" or not freezable(module, spec, self.device, nbytes):
            return None
        timed = self._timed
        known = timed[1:] if timed is not None and timed[0] == spec else None
        if known is not None and not known[0]:
            return None
        start = time.monotonic()
        try:
            graph = _compile(module)
            _check(module, graph, spec)
            sizes, largest = known or _faster_sizes(module, graph, spec, limit)
        except Exception as exc:  # any refusal of TorchScript's: serve eagerly
            log.info("%s serves its network: freezing it failed: %s", what, _short(exc))
            return None
        self._timed = (spec, sizes, largest)
        if not sizes:
            log.info("%s serves its network: its frozen graph is faster at no batch size", what)
            return None
        if known is not None:
            _warm(graph, spec, sizes)
        log.info(
            "%s serves a frozen graph at batches of %s samples (built in %.2f s)",
            what,
            ", ".join(str(s) for s in sorted(sizes)),
            time.monotonic() - start,
        )
        return Frozen(graph, sizes, largest)


def _compile(module: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        scripted = torch.jit.script(module.eval())
        frozen = torch.jit.freeze(scripted)
        return torch.jit.optimize_for_inference(frozen)


def _probe(spec: ModelSpec, samples: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randn((samples, *spec.input_shape), generator=generator)


def _check(module: nn.Module, graph: torch.jit.ScriptModule, spec: ModelSpec) -> None:
    """The graph answers a seeded probe as the network does."""
    x = _probe(spec, 2)
    with torch.inference_mode():
        eager = module(x)
        frozen = graph(x)
    if not isinstance(eager, torch.Tensor) or not isinstance(frozen, torch.Tensor):
        raise TypeError("the network does not answer with one tensor")
    if frozen.shape != eager.shape or frozen.dtype != eager.dtype:
        raise ValueError(f"the graph answers {list(frozen.shape)}, not {list(eager.shape)}")
    scale = max(float(eager.abs().max()), 1.0)
    error = float((frozen - eager).abs().max())
    if not error <= RTOL * scale:
        raise ValueError(f"the graph's answer differs from the network's by {error:.3g}")


def _faster_sizes(
    module: nn.Module, graph: torch.jit.ScriptModule, spec: ModelSpec, limit: int
) -> tuple[frozenset[int], int]:
    """The batch sizes (powers of two up to ``limit`` and TIMED_UP_TO) at which the graph
    answered faster than the network, each timed TIMINGS times, interleaved, and the
    largest size timed: sizes past TIMING_SECONDS of timing are left out (they count as
    the largest one timed)."""
    faster = set()
    timings = []
    size = 1
    start = time.monotonic()
    while size <= min(limit, TIMED_UP_TO) and (
        size == 1 or time.monotonic() - start < TIMING_SECONDS
    ):
        x = _probe(spec, size)
        best = {"graph": float("inf"), "network": float("inf")}
        with torch.inference_mode():
            for _ in range(TIMINGS):
                best["graph"] = min(best["graph"], seconds(graph, x))
                best["network"] = min(best["network"], seconds(module, x))
        if best["graph"] < best["network"]:
            faster.add(size)
        timings.append(f"{size}: {best['graph'] * 1e3:.1f}/{best['network'] * 1e3:.1f}")
        size *= 2
    log.info("frozen graph against network, ms per pass by samples: %s", ", ".join(timings))
    return frozenset(faster), size // 2


def _warm(graph: torch.jit.ScriptModule, spec: ModelSpec, sizes: frozenset[int]) -> None:
    """One call at each size the graph serves: its first-call costs, off the requests."""
    with torch.inference_mode():
        for size in sorted(sizes):
            graph(_probe(spec, size))


def seconds(network: Network, x: torch.Tensor) -> float:
    """How long one forward pass of ``network`` on ``x`` took."""
    start = time.perf_counter()
    network(x)
    return time.perf_counter() - start


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"
