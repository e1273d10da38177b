"""Bounded forward passes: activations sized at load, the forward batch derived from
them, large requests split on one lease, dynamic batching within the forward batch."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from devcluster import checkpoints as ck
from devcluster import tiny
from hotswap_contract.wire import Revision
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.errors import ModelTooLarge, RequestTooLarge
from hotswap_runtime.serving.codec import InferRequest
from hotswap_runtime.serving.inference import Engine
from hotswap_runtime.serving.metrics import Metrics
from hotswap_runtime.settings import load_settings
from hotswap_runtime.swap.footprint import HEADROOM, ForwardLimits, measure_peak
from hotswap_runtime.swap.probes import forward_passes
from hotswap_runtime.swap.swapper import Swapper

WIDTH = 1024  # 4 KiB of hidden layer a sample, and as much again after the relu
MEMORY = 1 << 20


def wide_revision(tmp_path: Path, number: int, **args: int) -> Revision:
    path = tmp_path / f"w{number}.safetensors"
    sha = ck.save(tiny.wide_weights(number, **args), path)
    return Revision.model_validate(
        ck.revision(
            number, f"file://{path}", sha, tiny.WIDE, (args.get("features", 16),), args=args
        )
    )


def swapper(tmp_path: Path, forward: ForwardLimits) -> Swapper:
    torch.set_num_threads(1)
    store = CheckpointStore(tmp_path / "cache", 10**8, 10**8, file_roots=(str(tmp_path),))
    return Swapper(store, torch.device("cpu"), tiny.ALLOWED, forward=forward)


def passes(module: nn.Module) -> list[torch.Tensor]:
    """The inputs of every forward pass of ``module`` from now on."""
    seen: list[torch.Tensor] = []
    module.register_forward_pre_hook(lambda _m, args: seen.append(args[0]) and None)
    return seen


async def infer(engine: Engine, x: torch.Tensor) -> tuple[torch.Tensor, str]:
    return await engine.serve(lambda: InferRequest(x), lambda version, out, _r: out)


def started(served: Swapper, max_batch_size: int = 1, delay: float = 0.0) -> Engine:
    engine = Engine(
        served, Metrics(torch.device("cpu")), max_batch_size=max_batch_size, max_queue_delay=delay
    )
    engine.start()
    return engine


def inputs(samples: int, features: int = 16) -> torch.Tensor:
    return torch.randint(
        0, 4, (samples, features), generator=torch.Generator().manual_seed(1)
    ).float()


# ---- sizing ----------------------------------------------------------------------------


def test_the_peak_counts_tensors_alive_at_once_not_views_or_in_place_results() -> None:
    model = tiny.make_wide(width=WIDTH).eval()
    x1, x4 = torch.zeros(1, 16), torch.zeros(4, 16)
    with torch.inference_mode():
        _, one = measure_peak(lambda: model(x1))
        _, four = measure_peak(lambda: model(x4))
    assert one == 2 * WIDTH * 4  # the hidden layer and its relu, both alive at once
    assert 4 * one <= four <= 4 * one + 4096

    def in_place(x: torch.Tensor) -> torch.Tensor:
        y = x * 2  # the one allocation
        return y.relu_().view(-1).t()

    x = torch.zeros(256)
    with torch.inference_mode():
        _, peak = measure_peak(lambda: in_place(x))
    assert peak == 256 * 4


def test_the_forward_batch_keeps_the_workers_under_the_bound() -> None:
    limits = ForwardLimits(max_batch=1024, memory_bytes=64 << 20, workers=2)
    footprint = limits.footprint(peak=100_000, output_shape=(1, 3, 5), what="revision 1")
    assert footprint.activation_bytes == HEADROOM * 100_000
    assert footprint.output_bytes == 3 * 5 * 4
    assert footprint.forward_batch == (16 << 20) // (HEADROOM * 100_000)
    forward = limits.workers * footprint.forward_batch * footprint.activation_bytes
    answers = limits.workers * footprint.max_answer_samples * footprint.output_bytes
    assert forward <= (32 << 20) and answers <= (32 << 20)
    assert forward + answers <= limits.memory_bytes
    small = ForwardLimits(max_batch=8, memory_bytes=64 << 20).footprint(10, (1,), "r")
    assert small.forward_batch == 8  # the count limit, where memory would allow more


def test_a_model_one_sample_of_which_does_not_fit_is_refused_naming_the_setting() -> None:
    limits = ForwardLimits(memory_bytes=MEMORY, workers=4)
    with pytest.raises(ModelTooLarge, match="HOTSWAP_FORWARD_MEMORY_BYTES") as refused:
        limits.footprint(peak=200_000, output_shape=(1, 3), what="revision 7")
    assert "revision 7" in str(refused.value)
    assert "policy.forwardMemoryBytes" in str(refused.value)


def test_a_revision_too_large_to_run_is_refused_at_load_and_the_old_one_serves(
    tmp_path: Path,
) -> None:
    served = swapper(tmp_path, ForwardLimits(memory_bytes=MEMORY, workers=4))
    served.swap_to(wide_revision(tmp_path, 1, width=WIDTH))
    with pytest.raises(ModelTooLarge, match="forward pass of one sample"):
        served.swap_to(wide_revision(tmp_path, 2, width=16 * WIDTH))
    current = served.current()
    assert current is not None and current.revision.revision == 1
    assert current.footprint is not None
    assert current.footprint.activation_bytes == HEADROOM * 2 * WIDTH * 4


def test_settings_read_the_forward_limits_and_refuse_out_of_range_ones() -> None:
    env = {
        "HOTSWAP_MODEL_NAME": "m",
        "HOTSWAP_MAX_FORWARD_BATCH": "32",
        "HOTSWAP_FORWARD_MEMORY_BYTES": str(64 << 20),
    }
    settings = load_settings([], env)
    assert (settings.max_forward_batch, settings.forward_memory_bytes) == (32, 64 << 20)
    for bad in ({"HOTSWAP_MAX_FORWARD_BATCH": "0"}, {"HOTSWAP_FORWARD_MEMORY_BYTES": "1000"}):
        with pytest.raises(SystemExit, match=next(iter(bad))):
            load_settings([], {**env, **bad})


# ---- splitting -------------------------------------------------------------------------


def test_a_request_over_the_forward_batch_runs_in_passes_on_one_revision(tmp_path: Path) -> None:
    served = swapper(tmp_path, ForwardLimits(max_batch=1024, memory_bytes=MEMORY))
    served.swap_to(wide_revision(tmp_path, 1, width=WIDTH))
    current = served.current()
    assert current is not None and current.footprint is not None
    batch = current.footprint.forward_batch
    assert batch == (MEMORY // 2) // (HEADROOM * 2 * WIDTH * 4) == 32
    seen = passes(current.module)
    x = inputs(5 * batch + 3)
    with torch.inference_mode():
        whole = current.module(x)
    seen.clear()
    engine = started(served)
    try:
        output, version = asyncio.run(infer(engine, x))
        small = inputs(batch)
        fitted, _ = asyncio.run(infer(engine, small))
    finally:
        engine.stop()
    assert version == "1"
    assert torch.equal(output, whole)
    assert [len(p) for p in seen] == [batch] * 5 + [3, batch]
    for number, piece in enumerate(seen[:6]):  # views of the request: nothing copied
        assert piece.data_ptr() == x[number * batch].data_ptr()
    assert seen[6] is small  # a request that fits one pass is passed on as it is
    assert torch.equal(fitted, whole[:batch])  # the same seed: small is x[:batch]


def test_an_answer_over_a_workers_share_is_refused_naming_the_most_samples(
    tmp_path: Path,
) -> None:
    served = swapper(tmp_path, ForwardLimits(memory_bytes=MEMORY))
    served.swap_to(wide_revision(tmp_path, 1, features=4, width=8, classes=4096))
    current = served.current()
    assert current is not None and current.footprint is not None
    most = current.footprint.max_answer_samples
    assert most == (MEMORY // 2) // (4096 * 4) == 32 > current.footprint.forward_batch
    engine = started(served)
    try:
        answer, _ = asyncio.run(infer(engine, inputs(most, 4)))
        with pytest.raises(RequestTooLarge, match=f"send at most {most} samples"):
            asyncio.run(infer(engine, inputs(most + 1, 4)))
    finally:
        engine.stop()
    assert answer.shape == (most, 4096)


def test_dynamic_batching_gathers_no_more_than_the_forward_batch(tmp_path: Path) -> None:
    served = swapper(tmp_path, ForwardLimits(max_batch=8, memory_bytes=MEMORY))
    served.swap_to(wide_revision(tmp_path, 1, width=WIDTH))
    current = served.current()
    assert current is not None
    x = inputs(40)
    with torch.inference_mode():
        whole = current.module(x)
    seen = passes(current.module)
    engine = started(served, max_batch_size=64, delay=0.5)

    async def many() -> list[Any]:
        return await asyncio.gather(*(infer(engine, x[i : i + 1]) for i in range(40)))

    try:
        answers = asyncio.run(many())
    finally:
        engine.stop()
    assert all(torch.equal(out, whole[i : i + 1]) for i, (out, _) in enumerate(answers))
    sizes = [len(p) for p in seen]
    assert sum(sizes) == 40 and max(sizes) == 8, sizes


def test_the_shadow_candidate_runs_a_sampled_batch_in_passes_of_the_forward_batch() -> None:
    model = tiny.make_wide(width=WIDTH).eval()
    model.load_state_dict(tiny.wide_weights(1, width=WIDTH))
    x = inputs(70)
    with torch.inference_mode():
        whole = model(x)
    seen = passes(model)
    out = forward_passes(model, x, torch.device("cpu"), None, 32)
    assert [len(p) for p in seen] == [32, 32, 6]
    assert torch.equal(out, whole)
