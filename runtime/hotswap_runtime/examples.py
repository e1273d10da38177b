"""Model factories shipped with the runtime image, allowed by default.

``python/hotswap_runtime.examples:mlp`` builds a stack of Linear layers: a model of any
size from a few integers, for samples and benchmarks. Factories of your own go into
your runtime image, and the cluster admin adds their module to the chart value
``policy.architectures``.
"""

from __future__ import annotations

from torch import nn


def mlp(features: int = 16, hidden: int = 64, classes: int = 10, layers: int = 2) -> nn.Module:
    """``layers`` hidden Linear+ReLU blocks of width ``hidden``, then a classifier."""
    if min(features, hidden, classes) < 1 or not 0 <= layers <= 1024:
        raise ValueError("features, hidden and classes must be >= 1, layers within 0..1024")
    blocks: list[nn.Module] = [nn.Flatten()]
    width = features
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    blocks.append(nn.Linear(width, classes))
    return nn.Sequential(*blocks)
