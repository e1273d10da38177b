"""A model is sized before it is built: on the meta device, or under an allocation
budget when its constructor cannot run there; one over max_model_bytes is never built."""

from __future__ import annotations

import pytest
import torch

from devcluster import tiny
from hotswap_contract.wire import ModelSpec
from hotswap_runtime.errors import ArchitectureError, ModelTooLarge
from hotswap_runtime.swap.allocations import AllocationBudget
from hotswap_runtime.swap.models import build_bounded, size_model
from tests.fixtures_runtime import hostile

ALLOWED = hostile.ALLOWED
GIB = 1 << 30


def spec(architecture: str = tiny.ARCHITECTURE, **args: object) -> ModelSpec:
    return ModelSpec(architecture=architecture, args=args, inputShape=[tiny.FEATURES])


def test_size_comes_from_the_meta_device() -> None:
    blueprint = size_model(spec(), ALLOWED, GIB)
    assert blueprint.module is None, "nothing was built for real"
    assert blueprint.nbytes == (12 + 3 + 1) * 4
    assert set(blueprint.layout) == {"fc.weight", "fc.bias", "scale"}


def test_a_giant_model_is_refused_unbuilt() -> None:
    with pytest.raises(ModelTooLarge, match=r"has 20000000004 bytes of parameters and buffers"):
        size_model(spec(classes=10**9), ALLOWED, GIB)


def test_a_constructor_that_reads_tensor_values_is_sized_under_a_budget() -> None:
    """torchvision's RegNets compute their widths with tensors: they cannot be built on
    meta, so they are built on the CPU under the allocation budget instead."""
    regnet = spec("torchvision/regnet_x_400mf")
    blueprint = size_model(regnet, ALLOWED, GIB)
    assert blueprint.module is not None and blueprint.nbytes > 20 << 20
    with pytest.raises(ModelTooLarge, match="building it would allocate more than"):
        size_model(spec("torchvision/regnet_x_400mf", num_classes=10**8), ALLOWED, GIB)


def test_the_budget_refuses_an_allocation_before_it_happens() -> None:
    budget = AllocationBudget(1 << 20, "x")
    with budget, pytest.raises(ModelTooLarge):
        torch.ones(1 << 30)  # 4 GiB, refused before it runs
    assert budget.exceeded
    with AllocationBudget(1 << 20, "y"), pytest.raises(ModelTooLarge):
        torch.zeros(1 << 10).expand(1 << 20, 1 << 10).contiguous()  # broadcast, then copy
    with AllocationBudget(1 << 20, "z"), pytest.raises(ModelTooLarge):
        torch.empty(0).resize_(1 << 30)


def test_a_swallowed_refusal_is_still_a_refusal() -> None:
    with pytest.raises(ModelTooLarge):
        build_bounded(
            spec(f"{hostile.HOSTILE}:make_swallowing"), torch.device("cpu"), ALLOWED, 1 << 20
        )


def test_a_factory_that_exits_is_an_architecture_error() -> None:
    with pytest.raises(ArchitectureError, match="SystemExit"):
        size_model(spec(f"{hostile.HOSTILE}:make_exiting"), ALLOWED, GIB)


def test_architectures_outside_the_allowlist_are_refused_before_sizing() -> None:
    with pytest.raises(ArchitectureError, match="not allowed in this cluster"):
        size_model(spec("python/os:system"), ALLOWED, GIB)
