"""Hostile checkpoints and model specs cost bounded memory, and leave none behind.

Each hostile case declares 512 MiB to 20 GB in a small file or a few bytes of
model.args; before these checks, parsing them cost +1 to +2 GiB and kept most of it.
Measured in a child process (tests/fixtures_runtime/memory.py) after warm-up swaps:
the peak RSS of a refused swap stays within PEAK_BOUND of the level before it (the
store's 8 MiB fetch buffer is most of it), and after it RSS is back within KEPT_BOUND.
A RegNet cannot be built on the meta device, so sizing builds it on the CPU under the
allocation budget: its layers before the refused classifier (22 MB) are real, and its
bound is REGNET_PEAK_BOUND.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devcluster import checkpoints as ck
from devcluster import tiny
from tests.fixtures_runtime import hostile
from tests.fixtures_runtime.memory import MIB, measure_swaps

PEAK_BOUND = 32 * MIB
KEPT_BOUND = 8 * MIB
REGNET_PEAK_BOUND = 64 * MIB
MAX_MODEL_BYTES = 256 * MIB
REGNET = "model.args for a 40 GB RegNet (no meta build)"


def rev(path: Path, number: int, **model: Any) -> dict[str, Any]:
    raw = ck.revision(number, f"file://{path}", ck.sha256_of(path))
    raw["model"].update(model)
    return raw


@pytest.mark.slow
def test_hostile_swaps_are_bounded_and_leave_nothing_behind(tmp_path: Path) -> None:
    warm = [tmp_path / "w1.safetensors", tmp_path / "w2.pt", tmp_path / "w3.safetensors"]
    for i, path in enumerate(warm, 1):
        ck.save(tiny.weights(i), path)
    weights = tmp_path / "w.safetensors"
    ck.save(tiny.weights(9), weights)
    cases = {
        "stride-0 .pt declaring 2 GiB": rev(hostile.stride0_pt(tmp_path / "s.pt"), 10),
        "deflate bomb .pt inflating to 512 MiB": rev(
            hostile.deflate_bomb_pt(tmp_path / "d.pt", 512 * MIB), 11
        ),
        "bytearray(2 GiB) in data.pkl": rev(hostile.bytearray_bomb_pt(tmp_path / "b.pt"), 12),
        "safetensors with a 100 MiB header": rev(
            hostile.huge_header(tmp_path / "h.safetensors", 100 * MIB), 13
        ),
        "model.args for a 20 GB model": rev(weights, 14, args={"classes": 10**9}),
        REGNET: rev(
            weights, 15, architecture="torchvision/regnet_x_400mf", args={"num_classes": 10**8}
        ),
        "legitimate swap after them": rev(warm[0], 16),
    }
    results = measure_swaps(
        tmp_path,
        warmup=[
            *(rev(path, i) for i, path in enumerate(warm, 1)),
            {**cases[REGNET], "revision": 4},
        ],
        measured=list(cases.items()),
        swapper_args={"max_model_bytes": MAX_MODEL_BYTES},
        preload=("torchvision",),
    )
    report = "\n".join(
        f"{r.name}: {r.outcome[:60]} peak +{r.peak / MIB:.1f} MiB kept +{r.kept / MIB:.1f} MiB"
        for r in results
    )
    print(report)
    for r in results:
        refused = r.name != "legitimate swap after them"
        assert (r.outcome != "ok") == refused, report
        assert r.peak <= (REGNET_PEAK_BOUND if r.name == REGNET else PEAK_BOUND), report
        assert r.kept <= KEPT_BOUND, report
