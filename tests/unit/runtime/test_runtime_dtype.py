"""spec.model.dtype: models built and served in float16/bfloat16; weights of another
dtype refused unless castWeights; the default leaves digests and model.json as they were."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import torch

from devcluster import checkpoints as ck
from devcluster import tiny
from hotswap_contract.wire import ModelSpec, Revision
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.errors import StateDictMismatch
from hotswap_runtime.swap.models import size_model
from hotswap_runtime.swap.swapper import Swapper

X = torch.tensor([[1.0, 2.0, 3.0, 4.0]])


def spec(**extra: object) -> ModelSpec:
    return ModelSpec.model_validate(
        {"architecture": tiny.ARCHITECTURE, "inputShape": [tiny.FEATURES], **extra}
    )


def test_the_default_dtype_is_left_out_of_what_crosses_the_wire() -> None:
    assert "dtype" not in spec().model_dump(by_alias=True)
    assert spec().dtype == "float32"
    assert spec(dtype="bfloat16").model_dump(by_alias=True)["dtype"] == "bfloat16"
    with pytest.raises(pydantic.ValidationError):
        spec(dtype="float64")
    with pytest.raises(pydantic.ValidationError):
        spec(dtype="int8")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_is_sized_in_its_dtype(dtype: torch.dtype) -> None:
    name = str(dtype).removeprefix("torch.")
    half = size_model(spec(dtype=name), tiny.ALLOWED, 10**6)
    full = size_model(spec(), tiny.ALLOWED, 10**6)
    assert {s.dtype for s in half.layout.values()} == {dtype}
    assert half.nbytes * 2 == full.nbytes


def revision(tmp_path: Path, n: int, state: dict[str, torch.Tensor], **model: object) -> Revision:
    path = tmp_path / f"r{n}.safetensors"
    doc = ck.revision(n, f"file://{path}", ck.save(state, path))
    doc["model"].update(model)
    return Revision.model_validate(doc)


def answer(s: Swapper) -> torch.Tensor:
    with s.lease() as model, torch.no_grad():
        out: torch.Tensor = model.module(X.to(model.dtype))
        return out.float()


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_half_precision_weights_serve_and_other_dtypes_need_a_cast(
    tmp_path: Path, name: str
) -> None:
    dtype = getattr(torch, name)
    store = CheckpointStore(tmp_path / "cache", 10**8, 10**8, file_roots=(str(tmp_path),))
    s = Swapper(store, torch.device("cpu"), tiny.ALLOWED)
    half = {k: v.to(dtype) for k, v in tiny.weights(1).items()}
    s.swap_to(revision(tmp_path, 1, half, dtype=name))
    assert torch.equal(answer(s), tiny.expected(tiny.weights(1), X))
    current = s.current()
    assert current is not None
    assert {t.dtype for t in current.targets.values()} == {dtype}
    full = tiny.weights(2)  # float32 weights into a half-precision model
    with pytest.raises(
        StateDictMismatch,
        match=f"are {name}; save the checkpoint in {name} or set spec.model.castWeights",
    ):
        s.swap_to(revision(tmp_path, 2, full, dtype=name))
    assert torch.equal(answer(s), tiny.expected(tiny.weights(1), X))
    s.swap_to(revision(tmp_path, 3, full, dtype=name, castWeights=True))
    assert torch.equal(answer(s), tiny.expected(tiny.weights(2), X))
    current = s.current()
    assert current is not None and {t.dtype for t in current.targets.values()} == {dtype}
    s.swap_to(revision(tmp_path, 4, tiny.weights(3)))  # back to float32: a new build
    assert torch.equal(answer(s), tiny.expected(tiny.weights(3), X))
    current = s.current()
    assert current is not None and current.dtype == torch.float32


def test_a_half_precision_model_is_built_in_its_dtype_not_converted_after() -> None:
    """Under an allocation budget of 1.5x its float16 size: a float32 build (2x) first
    would be refused; and the process-wide default dtype is left alone."""
    from hotswap_runtime.swap.models import build_bounded

    args = {"hidden": 512, "layers": 4}
    half = ModelSpec.model_validate(
        {
            "architecture": "python/hotswap_runtime.examples:mlp",
            "args": args,
            "inputShape": [16],
            "dtype": "float16",
        }
    )
    nbytes = size_model(half, ("python/hotswap_runtime.examples",), 10**9).nbytes
    module = build_bounded(
        half, torch.device("cpu"), ("python/hotswap_runtime.examples",), int(1.5 * nbytes)
    )
    assert {p.dtype for p in module.parameters()} == {torch.float16}
    assert torch.zeros(1).dtype == torch.float32
