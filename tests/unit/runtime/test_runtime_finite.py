"""The NaN/infinity screen reads exponent bits: every float dtype, every kind of
non-finite value, anywhere in a tensor that spans many blocks."""

from __future__ import annotations

import pytest
import torch

from hotswap_runtime.checkpoint import finite

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INTS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@pytest.mark.parametrize("dtype", FLOATS)
def test_finite_extremes_pass(dtype: torch.dtype) -> None:
    info = torch.finfo(dtype)
    values = torch.tensor([0.0, -0.0, info.max, -info.max, info.tiny, info.tiny / 4], dtype=dtype)
    assert finite.all_finite(values)
    assert finite.all_finite(torch.empty(0, dtype=dtype))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, 4095, 4096, 10_000 - 1])
def test_non_finite_found_in_any_block(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, bad: float, where: int
) -> None:
    monkeypatch.setattr(finite, "BLOCK_BYTES", 4096 * dtype.itemsize)  # 3 blocks
    values = torch.randn(10_000, dtype=torch.float64).to(dtype)
    assert finite.all_finite(values)
    values[where] = bad
    assert not finite.all_finite(values)


@pytest.mark.parametrize("dtype", FLOATS)
def test_any_nan_payload_and_sign_is_found(dtype: torch.dtype) -> None:
    values = torch.ones(8, dtype=dtype)
    values.view(INTS[dtype.itemsize])[3] = -1  # all bits set: a negative NaN
    assert not finite.all_finite(values)


def test_other_dtypes_fall_back_to_torch() -> None:
    assert finite.all_finite(torch.arange(5))  # integers hold no NaN
    complex_values = torch.tensor([1 + 1j, complex(float("nan"), 0)])
    assert not finite.all_finite(complex_values)
    strided = torch.ones(4, 4)[:, 0]
    strided[2] = float("inf")
    assert not finite.all_finite(strided)


def test_non_finite_names_the_tensors() -> None:
    state = {"a": torch.ones(3), "b": torch.tensor([1.0, float("nan")]), "c": torch.arange(3)}
    assert finite.non_finite(state) == ["b"]
