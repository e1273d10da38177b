"""Warm-up and validation probes: what a new model must answer before it serves.

Every swap runs a fixed pseudo-random batch of one through the new model: the output
must be a tensor with a batch dimension of 1, finite, and (for the same model spec)
the same shape as the serving revision's. A revision with ``validation`` also runs the
user's input and compares with the expected output within the tolerance; both files
are read with the same bounded readers as checkpoints (``weights.read_tensor``). The
probe also sizes the model's activations (footprint.py): the peak bytes its tensors
held at once, measured as it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from hotswap_contract.wire import Checkpoint, Revision
from hotswap_runtime.checkpoint.weights import read_tensor
from hotswap_runtime.devices import is_cuda
from hotswap_runtime.errors import NonFiniteWeights, ValidationFailed
from hotswap_runtime.swap.footprint import measure_peak
from hotswap_runtime.swap.models import torch_dtype

Fetch = Callable[[Checkpoint], Path]


def probe_input(input_shape: tuple[int, ...]) -> torch.Tensor:
    """A fixed pseudo-random batch of one, the same on every swap."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand((1, *input_shape), generator=generator)


def validate(
    module: nn.Module,
    revision: Revision,
    device: torch.device,
    stream: torch.cuda.Stream | None,
    serving_shape: tuple[int, ...] | None,
    fetch: Fetch,
) -> tuple[tuple[int, ...], int]:
    """The probe output's shape and the peak bytes of activations its forward pass held,
    or ValidationFailed/NonFiniteWeights saying why not. ``serving_shape`` is the
    serving revision's when it has the same model spec."""
    x = probe_input(revision.model.input_shape).to(torch_dtype(revision.model))
    output, peak = measure_peak(lambda: forward(module, x, device, stream))
    shape = check_probe(output, revision)
    if serving_shape is not None and shape != serving_shape:
        raise ValidationFailed(
            f"revision {revision.revision}: probe output shape {shape} differs from "
            f"the serving revision's {serving_shape}"
        )
    check_expected(module, revision, device, stream, fetch)
    return shape, peak


def forward(
    module: nn.Module, x: torch.Tensor, device: torch.device, stream: torch.cuda.Stream | None
) -> torch.Tensor:
    """``module(x)`` without autograd; on CUDA on ``stream``, the result on the CPU."""
    stream = stream if is_cuda(device) else None
    with torch.inference_mode():
        if stream is None:
            return as_tensor(module(x.to(device)), "probe")
        with torch.cuda.stream(stream):
            out = as_tensor(module(x.to(device, non_blocking=True)), "probe").float()
            result = out.to("cpu", non_blocking=True)
        stream.synchronize()
        return result


def forward_passes(
    module: nn.Module,
    x: torch.Tensor,
    device: torch.device,
    stream: torch.cuda.Stream | None,
    batch: int,
) -> torch.Tensor:
    """``forward`` in passes of at most ``batch`` samples (the model's forward batch),
    their outputs joined: one pass, no join, when ``x`` fits."""
    if x.ndim == 0 or x.shape[0] <= batch:
        return forward(module, x, device, stream)
    pieces = [forward(module, x[i : i + batch], device, stream) for i in range(0, len(x), batch)]
    return torch.cat(pieces)


def check_probe(output: torch.Tensor, revision: Revision) -> tuple[int, ...]:
    if output.ndim == 0 or output.shape[0] != 1:
        raise ValidationFailed(
            f"revision {revision.revision}: probe output shape {tuple(output.shape)} has no "
            "batch dimension of 1 for a batch of one"
        )
    if output.is_floating_point() and not bool(torch.isfinite(output).all()):
        raise NonFiniteWeights(
            f"revision {revision.revision}: probe output holds NaN or infinity; "
            "the checkpoint's weights are broken"
        )
    return tuple(output.shape)


def check_expected(
    module: nn.Module,
    revision: Revision,
    device: torch.device,
    stream: torch.cuda.Stream | None,
    fetch: Fetch,
) -> None:
    """The validation input's output against the expected one, when the spec has them."""
    check = revision.validation
    if check is None or check.input is None or check.expected is None:
        return
    x = read_tensor(fetch(check.input), check.input.uri)
    expected = read_tensor(fetch(check.expected), check.expected.uri).float()
    got = forward(module, x.to(torch_dtype(revision.model)), device, stream).float().cpu()
    if got.shape != expected.shape:
        raise ValidationFailed(
            f"revision {revision.revision}: validation output shape {tuple(got.shape)} "
            f"differs from expected {tuple(expected.shape)}"
        )
    worst = float((got - expected).abs().max()) if got.numel() else 0.0
    if not worst <= check.tolerance:
        raise ValidationFailed(
            f"revision {revision.revision}: validation output differs from expected by "
            f"{worst:.3g} > tolerance {check.tolerance}"
        )


def as_tensor(output: object, what: str) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise ValidationFailed(f"{what}: the model returned {type(output).__name__}, not a tensor")
    return output
