"""Layouts: fit checks, aliasing checks, and binding a standby to one flat buffer."""

from __future__ import annotations

import pytest
import torch

from devcluster import tiny
from hotswap_runtime.checkpoint.layouts import (
    Expected,
    FlatLayout,
    Slot,
    TensorSpec,
    bind_flat,
    bindable,
    is_bound,
    layout_of,
    overlaps,
    tie_groups,
)
from hotswap_runtime.errors import StateDictMismatch
from tests.fixtures_runtime import hostile

F32 = torch.float32


def slots(*specs: tuple[str, tuple[int, ...]]) -> FlatLayout:
    out, at = [], 0
    for name, shape in specs:
        n = TensorSpec(F32, shape).nbytes
        out.append(Slot(name, F32, shape, at, at + n))
        at += n
    return FlatLayout(tuple(out))


def test_flat_layouts_can_only_be_back_to_back() -> None:
    slots(("a", (2,)), ("b", (3,)))
    with pytest.raises(ValueError, match="'b' is not where it must be"):
        FlatLayout((Slot("a", F32, (2,), 0, 8), Slot("b", F32, (2,), 4, 12)))
    with pytest.raises(ValueError, match="'b' is not where it must be"):
        FlatLayout((Slot("a", F32, (2,), 0, 8), Slot("b", F32, (2,), 12, 20)))
    with pytest.raises(ValueError, match="'a' appears twice"):
        FlatLayout((Slot("a", F32, (2,), 0, 8), Slot("a", F32, (2,), 8, 16)))


def test_overlaps_find_aliasing_but_not_architecture_ties() -> None:
    base = torch.zeros(10)
    state = {"a": base[:6], "b": base[4:], "c": torch.zeros(3)}
    assert overlaps(state) == [("a", "b")]
    model = hostile.make_tied()
    targets = model.state_dict()
    ties = tie_groups(targets)
    assert ties == {frozenset({"0.weight", "1.weight"})}
    assert overlaps(targets, ties) == []
    assert overlaps(targets) == [("0.weight", "1.weight")], "untied, the same memory is aliasing"
    partial = {**targets, "1.bias": targets["0.weight"][0]}
    assert [b for _, b in overlaps(partial, ties)] == ["1.bias"], "a view into a tie is aliasing"


def test_bind_flat_rebinds_every_tensor_into_its_slot() -> None:
    model = tiny.make_model()
    layout = slots(("scale", (1,)), ("fc.bias", (3,)), ("fc.weight", (3, 4)))
    assert bindable(model.state_dict(), layout)
    flat, targets = bind_flat(model, layout, torch.device("cpu"))
    assert is_bound(targets, flat, layout)
    assert model.fc.weight.data_ptr() == flat.data_ptr() + 16
    assert isinstance(model.fc.weight, torch.nn.Parameter)
    assert overlaps(targets) == []
    other = slots(("fc.weight", (3, 4)), ("fc.bias", (3,)), ("scale", (1,)))
    assert not is_bound(targets, flat, other)


def test_tied_or_misfitting_models_are_not_bindable() -> None:
    tied = hostile.make_tied()
    layout = slots(("0.weight", (4, 4)), ("0.bias", (4,)), ("1.weight", (4, 4)), ("1.bias", (4,)))
    assert not bindable(tied.state_dict(), layout)
    assert not bindable(tiny.make_model().state_dict(), slots(("scale", (1,))))


def test_expected_check_names_what_does_not_fit() -> None:
    expected = Expected(layout_of(tiny.make_model().state_dict()), "python/t:m")
    found = {
        "fc.weight": TensorSpec(torch.float16, (3, 4)),
        "fc.bias": TensorSpec(F32, (4,)),
        "extra": TensorSpec(F32, (1,)),
    }
    with pytest.raises(StateDictMismatch) as refused:
        expected.check(found, "file:///c.pt")
    assert str(refused.value) == (
        "checkpoint file:///c.pt does not fit python/t:m: missing keys: scale; unexpected keys: "
        "extra; wrong shapes: fc.bias (4,) vs model (3,); wrong dtypes: fc.weight is float16, "
        "the model's is float32; save the checkpoint in float32 or set "
        "spec.model.castWeights: true"
    )
    cast = Expected(expected.layout, "python/t:m", cast=True)
    ok = {n: s for n, s in found.items() if n != "extra"} | {
        "fc.bias": TensorSpec(torch.int64, (3,)),
        "scale": TensorSpec(torch.float64, (1,)),
    }
    cast.check(ok, "file:///c.pt")
    with pytest.raises(StateDictMismatch, match="complex and real tensors are never cast"):
        cast.check({**ok, "scale": TensorSpec(torch.complex64, (1,))}, "file:///c.pt")
