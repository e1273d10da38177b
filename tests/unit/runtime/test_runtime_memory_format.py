"""The memory format networks serve in (memory_format.py), through real swaps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from devcluster import tiny
from hotswap_contract.wire import ModelSpec
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.settings import load_settings
from hotswap_runtime.swap.memory_format import serving_format
from hotswap_runtime.swap.swapper import Swapper
from tests.fixtures_runtime.conv import X, reference, revision

CPU = torch.device("cpu")


def spec(architecture: str, shape: tuple[int, ...]) -> ModelSpec:
    return ModelSpec.model_validate({"architecture": architecture, "inputShape": list(shape)})


def swapper(tmp_path: Path, mode: str, memory_format: str) -> Swapper:
    torch.set_num_threads(1)
    store = CheckpointStore(tmp_path / "cache", 10**8, 10**8, file_roots=(str(tmp_path),))
    return Swapper(store, CPU, tiny.ALLOWED, mode, memory_format=memory_format)


@pytest.mark.parametrize(
    ("architecture", "shape", "setting", "device", "expected"),
    [
        (tiny.CONV, tiny.CONV_INPUT, "auto", "cpu", torch.channels_last),
        (tiny.CONV, tiny.CONV_INPUT, "contiguous", "cpu", torch.contiguous_format),
        (tiny.CONV, tiny.CONV_INPUT, "auto", "meta", torch.contiguous_format),  # not a CPU
        (tiny.CONV, tiny.CONV_INPUT, "channels_last", "meta", torch.channels_last),
        (tiny.ARCHITECTURE, (tiny.FEATURES,), "auto", "cpu", torch.contiguous_format),
        (tiny.ARCHITECTURE, (tiny.FEATURES,), "channels_last", "cpu", torch.contiguous_format),
        (tiny.ARCHITECTURE, (3, 2, 2), "auto", "cpu", torch.contiguous_format),  # no Conv2d
    ],
)
def test_the_format_follows_the_setting_the_device_and_the_network(
    architecture: str, shape: tuple[int, ...], setting: str, device: str, expected: object
) -> None:
    module = tiny.make_conv() if architecture == tiny.CONV else tiny.make_model()
    chosen = serving_format(module, spec(architecture, shape), torch.device(device), setting)
    assert chosen == expected


@pytest.mark.parametrize("mode", ["auto", "inplace"])
def test_a_convolutional_network_serves_channels_last_through_every_swap(
    tmp_path: Path, mode: str
) -> None:
    """Fresh builds, reused standbys (which on the CPU would otherwise take the parsed
    buffer in the checkpoint's layout) and in-place copies all keep channels-last, and
    every answer is the contiguous network's."""
    swap = swapper(tmp_path, mode, "auto")
    for number in range(1, 7):
        swap.swap_to(revision(tmp_path, number))
        with swap.lease() as model, torch.no_grad():
            assert model.revision.revision == number
            weight = model.module.get_parameter("conv.weight")
            assert weight.is_contiguous(memory_format=torch.channels_last)
            assert not weight.is_contiguous()
            assert torch.equal(model.module(X), reference(number))
    assert swap.last_kind == ("inplace" if mode == "inplace" else "standby")


def test_contiguous_keeps_the_flat_buffer_a_standby_takes_on_the_cpu(tmp_path: Path) -> None:
    swap = swapper(tmp_path, "auto", "contiguous")
    for number in range(1, 6):
        swap.swap_to(revision(tmp_path, number))
    current = swap.current()
    assert current is not None and current.flat is not None
    assert current.module.get_parameter("conv.weight").is_contiguous()
    with swap.lease() as model, torch.no_grad():
        assert torch.equal(model.module(X), reference(5))


def test_an_unknown_format_is_refused_at_start() -> None:
    env = {"HOTSWAP_MODEL_NAME": "m", "HOTSWAP_MEMORY_FORMAT": "nhwc"}
    with pytest.raises(SystemExit, match="HOTSWAP_MEMORY_FORMAT 'nhwc'"):
        load_settings([], env)
    assert load_settings([], {"HOTSWAP_MODEL_NAME": "m"}).memory_format == "auto"
