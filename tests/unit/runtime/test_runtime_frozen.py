"""Frozen graphs (frozen.py): what serves after each kind of swap, and when a network
serves eagerly instead."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from devcluster import tiny
from hotswap_contract.wire import ModelSpec
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.settings import load_settings
from hotswap_runtime.swap import frozen
from hotswap_runtime.swap.frozen import MAX_BYTES, Freezer, Frozen, freezable
from hotswap_runtime.swap.swapper import Swapper
from tests.fixtures_runtime.conv import X, reference, revision

CPU = torch.device("cpu")
CONV_SPEC = ModelSpec.model_validate(
    {"architecture": tiny.CONV, "inputShape": list(tiny.CONV_INPUT)}
)


@pytest.fixture
def graph_faster(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every timing finds the graph faster (the tiny network's real timings are noise);
    the sizes timed, in order."""
    timed: list[int] = []

    def seconds(network: frozen.Network, x: torch.Tensor) -> float:
        graph = isinstance(network, torch.jit.ScriptModule)
        if graph:
            timed.append(int(x.shape[0]))
        return 0.0 if graph else 1.0

    monkeypatch.setattr(frozen, "seconds", seconds)
    return timed


def swapper(tmp_path: Path, mode: str, setting: str = "auto") -> Swapper:
    torch.set_num_threads(1)
    store = CheckpointStore(tmp_path / "cache", 10**8, 10**8, file_roots=(str(tmp_path),))
    return Swapper(store, CPU, tiny.ALLOWED, mode, freeze=setting)


def test_every_revision_serves_a_graph_of_its_own_weights_through_standby_swaps(
    tmp_path: Path, graph_faster: list[int]
) -> None:
    """A reused standby gets a graph built from its new weights, never the one it
    served with before (which would answer with the old revision's weights); the
    sizes are timed once for the spec."""
    swap = swapper(tmp_path, "auto")
    graphs = []
    for number in range(1, 7):
        swap.swap_to(revision(tmp_path, number))
        with swap.lease() as model, torch.inference_mode():
            assert model.revision.revision == number
            assert model.frozen is not None and model.network(2) is model.frozen.graph
            assert torch.allclose(model.network(2)(X), reference(number), atol=1e-5)
            graphs.append(model.frozen.graph)
    assert swap.last_kind == "standby"
    assert len({id(g) for g in graphs}) == len(graphs)
    assert graph_faster == [s for s in (1, 2, 4, 8, 16, 32) for _ in range(frozen.TIMINGS)]


def test_a_graph_slower_at_every_size_is_dropped_and_not_timed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    timed: list[int] = []

    def seconds(network: frozen.Network, x: torch.Tensor) -> float:
        timed.append(int(x.shape[0]))
        return 1.0 if isinstance(network, torch.jit.ScriptModule) else 0.0

    monkeypatch.setattr(frozen, "seconds", seconds)
    swap = swapper(tmp_path, "auto")
    for number in (1, 2, 3):
        swap.swap_to(revision(tmp_path, number))
        with swap.lease() as model:
            assert model.frozen is None and model.network(8) is model.module
    assert len(timed) == 2 * frozen.TIMINGS * 6  # the first revision only


def test_timing_stops_at_its_time_budget_and_larger_passes_follow_the_largest_size_timed(
    tmp_path: Path, graph_faster: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(frozen, "TIMING_SECONDS", 0.0)
    swap = swapper(tmp_path, "auto")
    swap.swap_to(revision(tmp_path, 1))
    with swap.lease() as model:
        assert model.frozen is not None
        assert (model.frozen.sizes, model.frozen.largest) == ({1}, 1)
        assert model.network(8) is model.frozen.graph
    assert set(graph_faster) == {1}


@pytest.mark.parametrize(
    ("samples", "graph"),
    [
        (1, False),
        (7, False),
        (8, True),
        (15, True),
        (16, False),
        (31, False),
        (32, True),
        (1000, True),
    ],
)
def test_a_pass_runs_on_the_graph_at_the_timed_sizes_it_won(samples: int, graph: bool) -> None:
    graph_of = frozen._compile(tiny.make_conv())
    assert Frozen(graph_of, frozenset({8, 32})).serves(samples) is graph


def test_an_in_place_swap_serves_the_eager_network_with_the_new_weights(
    tmp_path: Path, graph_faster: list[int]
) -> None:
    swap = swapper(tmp_path, "inplace")
    swap.swap_to(revision(tmp_path, 1))
    first = swap.current()
    assert first is not None and first.frozen is not None  # the first load is a fresh build
    for number in (2, 3):
        swap.swap_to(revision(tmp_path, number))
        assert swap.last_kind == "inplace"
        with swap.lease() as model, torch.inference_mode():
            assert model.frozen is None and model.network(2) is model.module
            assert torch.equal(model.network(2)(X), reference(number))


def test_off_serves_the_eager_network(tmp_path: Path, graph_faster: list[int]) -> None:
    swap = swapper(tmp_path, "auto", "off")
    for number in (1, 2):
        swap.swap_to(revision(tmp_path, number))
        current = swap.current()
        assert current is not None and current.frozen is None
    assert not graph_faster


class Unscriptable(nn.Module):
    """TorchScript cannot compile a forward that takes ``*args``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.conv(args[0]).mean((2, 3))


class Noisy(nn.Module):
    """Answers differently at every call: its graph cannot be checked against it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3)) + torch.rand(1)


@pytest.mark.parametrize(
    ("module", "why"),
    [(Unscriptable(), "NotSupportedError"), (Noisy(), "differs from the network's")],
)
def test_a_network_that_cannot_be_frozen_faithfully_serves_eagerly(
    module: nn.Module, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hotswap_runtime.swap.frozen")
    assert Freezer("auto", CPU)(module.eval(), CONV_SPEC, 10**6, 32, "revision 4") is None
    assert "revision 4 serves its network: freezing it failed" in caplog.text
    assert why in caplog.text


@pytest.mark.parametrize(
    ("spec", "device", "nbytes", "expected"),
    [
        (CONV_SPEC, "cpu", 10**6, True),
        (CONV_SPEC, "meta", 10**6, False),  # not a CPU
        (CONV_SPEC, "cpu", MAX_BYTES + 1, False),  # the graph's copy would cost too much
        (CONV_SPEC.model_copy(update={"dtype": "float16"}), "cpu", 10**6, False),
        (CONV_SPEC.model_copy(update={"input_shape": (3, 8)}), "cpu", 10**6, False),
    ],
)
def test_auto_freezes_measured_cases_only(
    spec: ModelSpec, device: str, nbytes: int, expected: bool
) -> None:
    assert freezable(tiny.make_conv(), spec, torch.device(device), nbytes) is expected
    assert not freezable(tiny.make_model(), CONV_SPEC, CPU, 10**6)  # no convolution


def test_an_unknown_setting_is_refused_at_start() -> None:
    env = {"HOTSWAP_MODEL_NAME": "m", "HOTSWAP_FREEZE": "always"}
    with pytest.raises(SystemExit, match="HOTSWAP_FREEZE 'always'"):
        load_settings([], env)
    assert load_settings([], {"HOTSWAP_MODEL_NAME": "m"}).freeze == "auto"
