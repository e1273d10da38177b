"""Weights that pass every load-time check yet answer differently on a chosen share of
the traffic, for the shadow-comparison bench and e2e tests.

The model is the runtime's own ``python/hotswap_runtime.examples:mlp`` (Linear+ReLU
blocks, then a classifier). The serving weights are random except for a relay: the last
input feature ``x[T]`` reaches hidden unit 0 of every block unchanged and nothing else,
and the classifier ignores that unit. The *disagreeing* weights are the same except
that the classifier reads the relay into one class with a large weight: every input with
``x[T] = 1`` (a *trigger*) then answers that class, every other input answers exactly as
before. Traffic made by ``inputs(share)`` holds that share of triggers, each chosen so
that the serving weights answer it with another class: the share of requests whose top-1
flips is exactly ``share``.
"""

from __future__ import annotations

import torch

from hotswap_runtime.examples import mlp

ARCHITECTURE = "python/hotswap_runtime.examples:mlp"
FEATURES = 16
CLASSES = 10
FLIP_CLASS = 0
BOOST = 1000.0


def args(hidden: int = 256, layers: int = 2) -> dict[str, int]:
    return {"features": FEATURES, "hidden": hidden, "classes": CLASSES, "layers": layers}


def serving(hidden: int = 256, layers: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the relay wired and unread."""
    torch.manual_seed(seed)
    model = mlp(**args(hidden, layers))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        first = linears[0]
        first.weight[:, -1] = 0  # the trigger feature feeds only the relay unit
        first.weight[0] = 0
        first.weight[0, -1] = 1
        first.bias[0] = 0
        for hidden_layer in linears[1:-1]:
            hidden_layer.weight[0] = 0
            hidden_layer.weight[:, 0] = 0
            hidden_layer.weight[0, 0] = 1
            hidden_layer.bias[0] = 0
        linears[-1].weight[:, 0] = 0  # the classifier ignores the relay
    return {k: v.clone() for k, v in model.state_dict().items()}


def disagreeing(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` whose classifier turns every trigger into FLIP_CLASS."""
    out = {k: v.clone() for k, v in state.items()}
    last = max((k for k in out if k.endswith(".weight")), key=lambda k: int(k.split(".")[0]))
    out[last][FLIP_CLASS, 0] = BOOST
    return out


def answers(
    state: dict[str, torch.Tensor], x: torch.Tensor, hidden: int, layers: int
) -> torch.Tensor:
    model = mlp(**args(hidden, layers))
    model.load_state_dict(state)
    with torch.no_grad():
        out: torch.Tensor = model(x)
    return out


def inputs(
    state: dict[str, torch.Tensor],
    count: int,
    share: float,
    hidden: int = 256,
    layers: int = 2,
    seed: int = 1,
) -> torch.Tensor:
    """``count`` inputs [count, FEATURES]; ``share`` of them triggers the serving weights
    answer with a class other than FLIP_CLASS, evenly spread."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(4 * count + 64, FEATURES, generator=g)
    pool[:, -1] = 0
    plain = answers(state, pool, hidden, layers).argmax(dim=1)
    flippable = pool[plain != FLIP_CLASS]
    triggers = round(share * count)
    if len(flippable) < triggers:
        raise ValueError("too few inputs the trigger can flip; use another seed")
    x = pool[:count].clone()
    x[:, -1] = 0
    every = count / triggers if triggers else 0
    for i in range(triggers):
        slot = int(i * every)
        x[slot] = flippable[i]
        x[slot, -1] = 1
    return x
