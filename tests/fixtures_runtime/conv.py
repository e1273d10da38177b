"""Revisions of the tiny convolutional network (devcluster.tiny.CONV) and the answers a
contiguous network with their weights gives: what the memory-format and frozen-graph
tests compare every served answer with."""

from __future__ import annotations

from pathlib import Path

import torch

from devcluster import checkpoints as ck
from devcluster import tiny
from hotswap_contract.wire import Revision

# small integers: every output is exact in float32, whatever the format or graph
X = torch.randint(0, 3, (2, *tiny.CONV_INPUT), generator=torch.Generator().manual_seed(7)).float()


def revision(tmp_path: Path, number: int) -> Revision:
    """Revision ``number`` of the network, its weights seeded by ``number``, in a file."""
    path = tmp_path / f"r{number}.safetensors"
    sha = ck.save(tiny.conv_weights(number), path)
    doc = ck.revision(number, f"file://{path}", sha, tiny.CONV, tiny.CONV_INPUT)
    return Revision.model_validate(doc)


def reference(number: int) -> torch.Tensor:
    """The answer of a contiguous network with revision ``number``'s weights to X."""
    net = tiny.make_conv()
    net.load_state_dict(tiny.conv_weights(number))
    with torch.no_grad():
        return net(X)
