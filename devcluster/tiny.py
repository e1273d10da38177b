"""A tiny model for the tests, benchmarks and e2e image: ``python/devcluster.tiny:make_model``.

Weights are small integers and inputs are small integers, so every output is exact in
float32 whatever order the sums run in: a test can compare outputs with ``==``.
"""

from __future__ import annotations

import os
import signal

import torch
from torch import nn

ARCHITECTURE = "python/devcluster.tiny:make_model"
# An architecture allowlist for runtimes that load it: torchvision and this module.
ALLOWED = ("torchvision", "python/devcluster.tiny")
# Same network, but its process dies (SIGKILL) when its scale is CRASH_SCALE: a stand-in
# for a checkpoint that kills the loader (out of memory, a fatal error in native code).
FRAGILE = "python/devcluster.tiny:make_fragile"
CRASH_SCALE = 666.0
FEATURES = 4
CLASSES = 3


class Tiny(nn.Module):
    def __init__(self, features: int = FEATURES, classes: int = CLASSES) -> None:
        super().__init__()
        self.fc = nn.Linear(features, classes)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x.flatten(1)) * self.scale
        return out


class Fragile(Tiny):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(self.scale) == CRASH_SCALE:
            if os.getpid() == 1:  # a container's init: no signal from inside can kill it
                os._exit(128 + signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


class Pooled(Tiny):
    """Tiny's weights on big inputs: every sample is averaged down to FEATURES values
    (groups of FEATURES consecutive numbers), so a 200 MB request gives a tiny answer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.reshape(x.shape[0], -1, self.fc.in_features).mean(1)
        return super().forward(pooled)


POOLED = "python/devcluster.tiny:make_pooled"


def make_pooled(features: int = FEATURES, classes: int = CLASSES) -> nn.Module:
    return Pooled(features, classes)


def make_model(features: int = FEATURES, classes: int = CLASSES) -> nn.Module:
    return Tiny(features, classes)


def make_fragile(features: int = FEATURES, classes: int = CLASSES) -> nn.Module:
    return Fragile(features, classes)


DEEP = "python/devcluster.tiny:make_deep"
DEEP_WIDTH, DEEP_DEPTH = 2048, 8  # about 34M multiply-adds a sample: 10+ ms on one thread


class Deep(nn.Module):
    """A larger network with Tiny's input and output shapes: the same answers' shape,
    many times the latency (the canary analysis e2e test's slow candidate)."""

    def __init__(self, features: int = FEATURES, classes: int = CLASSES) -> None:
        super().__init__()
        self.inp = nn.Linear(features, DEEP_WIDTH)
        self.hidden = nn.Sequential(*(nn.Linear(DEEP_WIDTH, DEEP_WIDTH) for _ in range(DEEP_DEPTH)))
        self.out = nn.Linear(DEEP_WIDTH, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(torch.relu(self.hidden(self.inp(x.flatten(1)))))
        return out


def make_deep(features: int = FEATURES, classes: int = CLASSES) -> nn.Module:
    return Deep(features, classes)


def deep_weights(seed: int) -> dict[str, torch.Tensor]:
    """Small random weights for Deep (finite outputs)."""
    torch.manual_seed(seed)
    return {k: v.detach().clone() * 0.1 for k, v in Deep().state_dict().items()}


def crashing_weights() -> dict[str, torch.Tensor]:
    """Weights that make a Fragile model kill its process on its first forward pass."""
    return {**weights(7), "scale": torch.tensor([CRASH_SCALE])}


def weights(seed: int, features: int = FEATURES, classes: int = CLASSES) -> dict[str, torch.Tensor]:
    """A state dict of small integers; different seeds give different outputs."""
    g = torch.Generator().manual_seed(seed)
    return {
        "fc.weight": torch.randint(-4, 5, (classes, features), generator=g).float(),
        "fc.bias": torch.randint(-4, 5, (classes,), generator=g).float(),
        "scale": torch.tensor([float(seed % 3 + 1)]),
    }


def expected(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    model = Tiny(state["fc.weight"].shape[1], state["fc.weight"].shape[0])
    model.load_state_dict(state)
    with torch.no_grad():
        out: torch.Tensor = model(x)
    return out


WIDE = "python/devcluster.tiny:make_wide"
WIDE_FEATURES, WIDE_WIDTH = 16, 16384  # 64 bytes of input, 64 KiB of hidden layer a sample


class Wide(nn.Module):
    """A model whose activations dominate: each sample's WIDE_FEATURES numbers become a
    hidden layer of ``width`` (1024 times the input's bytes), then CLASSES outputs. With
    ``wide_weights`` (integers in -1..1) and small integer inputs every output is exact
    in float32, however the batch is split."""

    def __init__(
        self, features: int = WIDE_FEATURES, width: int = WIDE_WIDTH, classes: int = CLASSES
    ) -> None:
        super().__init__()
        self.hidden = nn.Linear(features, width)
        self.out = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(torch.relu(self.hidden(x.flatten(1))))
        return out


def make_wide(
    features: int = WIDE_FEATURES, width: int = WIDE_WIDTH, classes: int = CLASSES
) -> nn.Module:
    return Wide(features, width, classes)


def wide_weights(
    seed: int, features: int = WIDE_FEATURES, width: int = WIDE_WIDTH, classes: int = CLASSES
) -> dict[str, torch.Tensor]:
    """Integer weights in -1..1 for Wide: exact outputs for inputs of small integers."""
    g = torch.Generator().manual_seed(seed)
    shapes = Wide(features, width, classes).state_dict()
    return {k: torch.randint(-1, 2, v.shape, generator=g).float() for k, v in shapes.items()}


CONV = "python/devcluster.tiny:make_conv"
CONV_INPUT = (3, 8, 8)  # channels, height, width of one sample


class Conv(nn.Module):
    """A 2-D convolutional network (served channels-last on the CPU: memory_format.py).
    With ``conv_weights`` (integers in -1..1) and small integer inputs on CONV_INPUT
    every output is exact in float32, whatever the memory format."""

    def __init__(self, channels: int = 4, classes: int = CLASSES) -> None:
        super().__init__()
        self.conv = nn.Conv2d(CONV_INPUT[0], channels, 3, padding=1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.relu(self.conv(x)).mean((2, 3))  # 64 pixels: exact in float32
        out: torch.Tensor = self.fc(pooled)
        return out


def make_conv(channels: int = 4, classes: int = CLASSES) -> nn.Module:
    return Conv(channels, classes)


def conv_weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randint(-1, 2, v.shape, generator=g).float()
        for k, v in Conv().state_dict().items()
    }
