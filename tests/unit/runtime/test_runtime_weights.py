"""Checkpoint parsing: formats, the flat safetensors reader, refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hotswap_runtime.devices import Staging
from hotswap_runtime.errors import FormatError
from hotswap_runtime.weights import checkpoint_format, non_finite_keys, read_state_dict


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


def test_format_comes_from_the_uri_suffix() -> None:
    assert checkpoint_format("s3://b/k/model.safetensors") == "safetensors"
    assert checkpoint_format("https://h/x.PTH?sig=1") == "pytorch"
    with pytest.raises(FormatError, match=r"file type '\.bin' is refused"):
        checkpoint_format("file:///m/model.bin")


@pytest.mark.parametrize("pin", [False])
def test_flat_reader_matches_the_safetensors_library(tmp_path: Path, pin: bool) -> None:
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(mixed_state(), str(path))
    staging = Staging(pin=pin)
    first = read_state_dict(path, "file:///m.safetensors", staging)
    reference = safetensors.torch.load_file(str(path))
    assert set(first) == set(reference)
    for name, tensor in reference.items():
        assert first[name].dtype == tensor.dtype and torch.equal(first[name], tensor)
    other = {k: v * 2 if v.is_floating_point() else v for k, v in mixed_state().items()}
    safetensors.torch.save_file(other, str(path))
    second = read_state_dict(path, "file:///m.safetensors", staging)
    assert second["a"].data_ptr() == first["a"].data_ptr(), "same layout reuses the views"
    assert torch.equal(second["a"], other["a"])


def test_truncated_safetensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(mixed_state(), str(path))
    data = path.read_bytes()
    for cut in (4, 20, len(data) - 3):
        path.write_bytes(data[:cut])
        with pytest.raises(FormatError, match="not a valid safetensors file"):
            read_state_dict(path, "file:///m.safetensors", Staging(pin=False))


def test_pickle_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"w": Evil(marker)}, path)
    with pytest.raises(FormatError, match=r"weights_only=True"):
        read_state_dict(path, "file:///evil.pt")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # proves the payload is real: unrestricted, it runs
    assert marker.exists()


def test_pt_state_dict_is_staged(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save(mixed_state(), path)
    state = read_state_dict(path, "file:///m.pt", Staging(pin=False))
    assert torch.equal(state["a"], mixed_state()["a"])


def test_pt_of_a_non_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save([torch.ones(1)], path)
    with pytest.raises(FormatError, match="not a state_dict"):
        read_state_dict(path, "file:///m.pt")


def test_non_finite_keys_names_the_bad_tensors() -> None:
    state = mixed_state()
    assert non_finite_keys(state) == []
    state["b"] = torch.tensor([1.0, float("inf")], dtype=torch.float16)
    state["a"] = state["a"].clone()
    state["a"][1, 1] = float("nan")
    assert sorted(non_finite_keys(state)) == ["a", "b"]
