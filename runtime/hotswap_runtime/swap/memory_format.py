"""The memory format a model serves in (``HOTSWAP_MEMORY_FORMAT``).

On the CPU, PyTorch's 2-D convolutions are fastest on channels-last (NHWC) tensors:
resnet18 at 3x64x64 with one torch thread answers in about 0.7x the time at batch 1
and 32, about the same at batches 2 to 16 (docs/architecture.md). ``auto``
(the default) serves such networks channels-last: on the CPU, when the model has a
``Conv2d`` and takes one image per sample (3-D ``inputShape``, 4-D batches). A GPU keeps
the checkpoint's format under ``auto`` (untested here); ``channels_last`` asks for it on
any device, ``contiguous`` never.

The format is set when a network is built, before its weights are loaded; the weights
are then copied into it (``load_state_dict``, or per tensor into a standby): a network
whose tensors are not contiguous is never rebound to a flat buffer in the checkpoint's
layout (``layouts.bindable``). Inputs arrive contiguous; the first convolution
returns channels-last activations and later layers keep them.
"""

from __future__ import annotations

import torch
from torch import nn

from hotswap_contract.wire import ModelSpec


def serving_format(
    module: nn.Module, spec: ModelSpec, device: torch.device, setting: str
) -> torch.memory_format:
    """The format ``module`` serves in on ``device`` under ``setting``: auto,
    contiguous or channels_last."""
    images = len(spec.input_shape) == 3
    if setting == "contiguous" or not images:
        return torch.contiguous_format
    if setting == "channels_last":
        return torch.channels_last
    convolutional = any(isinstance(m, nn.Conv2d) for m in module.modules())
    if device.type == "cpu" and convolutional:
        return torch.channels_last
    return torch.contiguous_format


def to_serving_format(
    module: nn.Module, spec: ModelSpec, device: torch.device, setting: str
) -> nn.Module:
    """``module`` with its 4-D tensors in the format it serves in (a no-op for
    contiguous)."""
    chosen = serving_format(module, spec, device, setting)
    if chosen is torch.contiguous_format:
        return module
    return module.to(memory_format=chosen)
