"""Checkpoint parsing: formats, the flat safetensors reader, staging, refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import safetensors.torch
import torch

from devcluster import tiny
from hotswap_runtime.checkpoint.finite import non_finite
from hotswap_runtime.checkpoint.layouts import Expected, layout_of
from hotswap_runtime.checkpoint.staging import Staging
from hotswap_runtime.checkpoint.weights import checkpoint_format, read_state_dict, read_tensor
from hotswap_runtime.errors import FormatError, StateDictMismatch
from tests.fixtures_runtime import hostile


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def mixed_state() -> dict[str, torch.Tensor]:
    return {
        "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b": torch.tensor([1.5, -2.0], dtype=torch.float16),
        "steps": torch.tensor(7, dtype=torch.int64),
        "empty": torch.empty(0),
    }


def expect(state: dict[str, torch.Tensor], cast: bool = False) -> Expected:
    return Expected(layout_of(state), "python/m:f", cast)


TINY = expect(tiny.make_model().state_dict())


def test_format_comes_from_the_uri_suffix() -> None:
    assert checkpoint_format("s3://b/k/model.safetensors") == "safetensors"
    assert checkpoint_format("https://h/x.PTH?sig=1") == "pytorch"
    with pytest.raises(FormatError, match=r"file type '\.bin' is refused"):
        checkpoint_format("file:///m/model.bin")
    with pytest.raises(FormatError) as refused:
        checkpoint_format("https://user:secret@h/m.zip?token=abc")
    assert "secret" not in str(refused.value) and "token" not in str(refused.value)


def test_flat_reader_matches_the_safetensors_library(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(mixed_state(), str(path))
    staging = Staging(pin=False)
    first = read_state_dict(path, "file:///m.safetensors", expect(mixed_state()), staging)
    reference = safetensors.torch.load_file(str(path))
    assert set(first.state) == set(reference)
    for name, tensor in reference.items():
        assert first.state[name].dtype == tensor.dtype and torch.equal(first.state[name], tensor)
    assert first.flat is not None and first.flat.numel() == sum(
        t.numel() * t.element_size() for t in reference.values()
    )
    other = {k: v * 2 if v.is_floating_point() else v for k, v in mixed_state().items()}
    safetensors.torch.save_file(other, str(path))
    second = read_state_dict(path, "file:///m.safetensors", expect(mixed_state()), staging)
    assert second.flat is first.flat, "the same size reuses the flat buffer"
    assert second.state["a"] is first.state["a"], "the same layout reuses the views"
    assert torch.equal(second.state["a"], other["a"])


def test_a_new_flat_buffer_gets_new_views(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    staging = Staging(pin=False)
    small = {"a": torch.ones(2)}
    safetensors.torch.save_file(small, str(path))
    first = read_state_dict(path, "file:///m.safetensors", expect(small), staging)
    big = {"a": torch.ones(4)}
    safetensors.torch.save_file(big, str(path))
    second = read_state_dict(path, "file:///m.safetensors", expect(big), staging)
    assert second.flat is not first.flat
    assert second.state["a"].data_ptr() == second.flat.data_ptr()  # never a view of the old


def test_truncated_safetensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(mixed_state(), str(path))
    data = path.read_bytes()
    for cut in (4, 20, len(data) - 3):
        path.write_bytes(data[:cut])
        with pytest.raises(FormatError, match="not a valid safetensors file"):
            read_state_dict(path, "file:///m.safetensors", expect(mixed_state()), Staging(False))


def test_pickle_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"w": Evil(marker)}, path)
    with pytest.raises(FormatError, match=r"data\.pkl calls posix\.system"):
        read_state_dict(path, "file:///evil.pt", TINY, Staging(False))
    assert not marker.exists()
    torch.load(path, weights_only=False)  # proves the payload is real: unrestricted, it runs
    assert marker.exists()


def test_pt_state_dict_is_staged_in_the_models_layout(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save(mixed_state(), path)
    staging = Staging(pin=False)
    parsed = read_state_dict(path, "file:///m.pt", expect(mixed_state()), staging)
    assert parsed.flat is None
    assert torch.equal(parsed.state["a"], mixed_state()["a"])
    again = read_state_dict(path, "file:///m.pt", expect(mixed_state()), staging)
    assert again.state["a"] is parsed.state["a"], "staging buffers are reused"


def test_a_state_dict_key_wrapper_is_unwrapped(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save({"state_dict": tiny.weights(2)}, path)
    parsed = read_state_dict(path, "file:///m.pt", TINY, Staging(False))
    assert torch.equal(parsed.state["fc.weight"], tiny.weights(2)["fc.weight"])


def test_pt_of_a_non_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save([torch.ones(1)], path)
    with pytest.raises(FormatError, match="not a state_dict"):
        read_state_dict(path, "file:///m.pt", TINY, Staging(False))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_other_dtypes_are_refused_unless_cast_is_allowed(tmp_path: Path, suffix: str) -> None:
    state = dict(tiny.weights(3))
    state["fc.weight"] = state["fc.weight"].half()
    state["fc.bias"] = state["fc.bias"].long()
    path = tmp_path / f"m{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        safetensors.torch.save_file(state, str(path))
    with pytest.raises(StateDictMismatch) as refused:
        read_state_dict(path, f"file:///m{suffix}", TINY, Staging(False))
    reason = str(refused.value)
    assert "fc.weight is float16, the model's is float32" in reason
    assert "fc.bias is int64, the model's is float32" in reason
    assert "save the checkpoint in float32 or set spec.model.castWeights: true" in reason
    cast = Expected(TINY.layout, TINY.architecture, cast=True)
    parsed = read_state_dict(path, f"file:///m{suffix}", cast, Staging(False))
    assert parsed.flat is None, "a cast cannot use the one bulk copy"
    for name, tensor in tiny.weights(3).items():
        assert parsed.state[name].dtype == torch.float32
        assert torch.equal(parsed.state[name], tensor)


def test_read_tensor_reads_one_tensor_of_either_format(tmp_path: Path) -> None:
    x = torch.arange(8.0).reshape(2, 4)
    safetensors.torch.save_file({"x": x}, str(tmp_path / "x.safetensors"))
    torch.save({"x": x}, tmp_path / "x.pt")
    for name in ("x.safetensors", "x.pt"):
        assert torch.equal(read_tensor(tmp_path / name, f"file:///{name}"), x)
    torch.save({"x": x, "y": x}, tmp_path / "two.pt")
    with pytest.raises(FormatError, match="expected exactly one"):
        read_tensor(tmp_path / "two.pt", "file:///two.pt")


def test_read_tensor_refuses_views_larger_than_the_file(tmp_path: Path) -> None:
    path = hostile.pt_from_views(
        tmp_path / "x.pt", {"x": (torch.ones(1), (1 << 14, 1 << 14), (0, 0))}
    )
    with pytest.raises(FormatError, match=r"declare 1073741824 bytes in a \d+-byte file"):
        read_tensor(path, "file:///x.pt")


def test_non_finite_names_the_bad_tensors() -> None:
    state = mixed_state()
    assert non_finite(state) == []
    state["b"] = torch.tensor([1.0, float("inf")], dtype=torch.float16)
    state["a"] = state["a"].clone()
    state["a"][1, 1] = float("nan")
    assert sorted(non_finite(state)) == ["a", "b"]
