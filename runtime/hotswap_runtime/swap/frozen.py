"""A frozen graph of a network, served in its place on the CPU (``HOTSWAP_FREEZE``).

PyTorch's eager convolutions on the CPU reorder their weights into oneDNN's blocked
layout at every call and run batch norm as a pass of its own. A frozen TorchScript graph
(``torch.jit.freeze`` then ``optimize_for_inference``) folds batch norm into the
convolutions and keeps their weights prepacked: resnet18 at 3x64x64 with one torch
thread answers batch 8 in about 0.8x the eager time and batch 32 in 0.75x
(docs/architecture.md, "Serving interface").

Under ``auto`` (the default) a revision serves such a graph when the network is a 2-D
convolutional float32 network on the CPU taking one image per sample, at most
``MAX_BYTES`` of tensors, that TorchScript compiles, and whose graph answers a seeded
probe as the eager network does (within float32 rounding). Anything else, or ``off``,
serves the eager network. The graph is built from the loaded and validated network
before it is activated, off the serving path, once per revision; it holds its own
(folded, prepacked) copy of the convolutions' weights, so a serving revision costs up to
twice its tensors' bytes. An in-place swap serves the eager network: its graph would
still hold the old weights.

TorchScript is deprecated in favour of ``torch.compile``, which needs a C++ compiler
in the pod and compiles for tens of seconds; where this torch cannot script or freeze a
network, ``auto`` serves it eagerly and says why in the log.
"""

from __future__ import annotations

import logging
import time
import warnings

import torch
from torch import nn

from hotswap_contract.wire import ModelSpec
from hotswap_runtime.swap.models import torch_dtype

log = logging.getLogger(__name__)

MAX_BYTES = 1024**3  # a larger network serves eagerly: the graph's copy would cost as much
PROBE_SAMPLES = 2
PROBE_SEED = 20261207
RTOL = 1e-4  # of the eager answer's largest magnitude: float32 rounding of folded BN


def freezable(module: nn.Module, spec: ModelSpec, device: torch.device, nbytes: int) -> bool:
    """Whether ``auto`` tries a frozen graph for ``module``: measured cases only."""
    return (
        device.type == "cpu"
        and len(spec.input_shape) == 3
        and torch_dtype(spec) == torch.float32
        and nbytes <= MAX_BYTES
        and any(isinstance(m, nn.Conv2d) for m in module.modules())
    )


def freeze(
    module: nn.Module, spec: ModelSpec, device: torch.device, nbytes: int, setting: str, what: str
) -> torch.jit.ScriptModule | None:
    """``module``'s frozen graph, checked and warmed, or None to serve it eagerly."""
    if setting == "off" or not freezable(module, spec, device, nbytes):
        return None
    start = time.monotonic()
    try:
        graph = _compile(module)
        _check(module, graph, spec)
    except Exception as exc:  # any refusal of TorchScript's: serve eagerly
        log.info("%s serves its eager network: freezing it failed: %s", what, _short(exc))
        return None
    log.info("%s serves a frozen graph (built in %.2f s)", what, time.monotonic() - start)
    return graph


def _compile(module: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        scripted = torch.jit.script(module.eval())
        frozen = torch.jit.freeze(scripted)
        return torch.jit.optimize_for_inference(frozen)


def _check(module: nn.Module, graph: torch.jit.ScriptModule, spec: ModelSpec) -> None:
    """The graph answers a seeded probe as the eager network does; two more calls
    (one sample, then the probe) take its first-call costs off the first requests."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    x = torch.randn((PROBE_SAMPLES, *spec.input_shape), generator=generator)
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
        graph(x[:1])
        graph(x)


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"
