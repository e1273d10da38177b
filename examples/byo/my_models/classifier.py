"""A small classifier, as a user's own module: ``python/my_models.classifier:make``.

The runtime calls the factory with ``spec.model.args`` to build the network on the
meta device, then loads the checkpoint's tensors into it: every name and shape in the
checkpoint must match ``state_dict()``.
"""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(features, 16)
        self.out = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(torch.relu(self.hidden(x.flatten(1))))
        return out


def make(features: int = 8, classes: int = 4) -> nn.Module:
    return Classifier(features, classes)
