"""The safetensors reader refuses what the reference loader refuses, and more, before it
allocates anything for the data; each defect comes from tests/fixtures_runtime/hostile."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch

from devcluster import tiny
from hotswap_runtime.checkpoint.layouts import Expected, layout_of
from hotswap_runtime.checkpoint.safetensors_file import MAX_HEADER_BYTES, header_limit
from hotswap_runtime.checkpoint.staging import Staging
from hotswap_runtime.checkpoint.weights import read_state_dict, read_tensor
from hotswap_runtime.errors import FormatError, StateDictMismatch
from tests.fixtures_runtime import hostile

TINY = Expected(layout_of(tiny.make_model().state_dict()), tiny.ARCHITECTURE)
URI = "file:///m.safetensors"

# (writer, what the reason says, whether the reference loader refuses it too)
CASES: dict[str, tuple[Callable[[Path], Path], str, bool]] = {
    "overlapping offsets": (
        hostile.overlapping_offsets,
        "'fc.bias' overlaps the tensor before",
        True,
    ),
    "duplicate names": (hostile.duplicate_names, "name 'fc.weight' appears twice", True),
    "hole": (hostile.hole, "'fc.bias' leaves a hole", True),
    "reversed offsets": (hostile.reversed_offsets, "data_offsets that are not", True),
    "wrong nbytes": (hostile.wrong_nbytes, r"has 12 bytes for shape \[4\], which needs 16", True),
    "unknown dtype": (hostile.unknown_dtype, "'scale' has an unknown dtype", True),
    "trailing bytes": (hostile.trailing_bytes, "take 64 bytes of a 128-byte data section", True),
    "negative dim": (lambda p: hostile.bad_shape(p, [-1]), "not a list of non-negative", True),
    "float dim": (lambda p: hostile.bad_shape(p, [1.0]), "not a list of non-negative", True),
    "bool dim": (lambda p: hostile.bad_shape(p, [True]), "not a list of non-negative", False),
    "shape not a list": (lambda p: hostile.bad_shape(p, 1), "not a list of non-negative", True),
    "declared header past the end": (
        hostile.huge_declared_header,
        "past the end of the file",
        True,
    ),
    "header larger than the model needs": (
        lambda p: hostile.huge_header(p, 1 << 20),
        r"header is \d+ bytes, more than the \d+ bytes",
        False,
    ),
    "deeply nested JSON": (lambda p: hostile.deep_json(p, 30_000), "header is not", True),
    "JSON array": (lambda p: hostile.write_safetensors(p, "[1]", b""), "not a JSON object", True),
    "NaN literal": (
        lambda p: hostile.write_safetensors(p, '{"a": NaN}', b""),
        r"header is not JSON \(ValueError\)",
        True,
    ),
    "not UTF-8": (lambda p: hostile.write_safetensors(p, b'{"\xff": 1}', b""), "not UTF-8", True),
    "metadata not strings": (
        lambda p: hostile.write_safetensors(p, '{"__metadata__": {"a": 1}}', b""),
        "__metadata__ is not a map of strings",
        True,
    ),
    "extra entry key": (
        lambda p: hostile.safetensors_like(p, edit=lambda e: [(n, {**i, "x": 1}) for n, i in e]),
        "must have exactly dtype, shape and data_offsets",
        False,
    ),
    "too short": (lambda p: (p.write_bytes(b"\x01\x00"), p)[1], "shorter than its 8-byte", True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_file_is_refused_before_its_data_is_allocated(tmp_path: Path, case: str) -> None:
    write, reason, reference_refuses = CASES[case]
    path = write(tmp_path / "m.safetensors")
    staging = Staging(pin=False)
    with pytest.raises(FormatError, match=reason) as refused:
        read_state_dict(path, URI, TINY, staging)
    assert staging._flat is None, "nothing was allocated for the data"
    assert len(str(refused.value)) < 400
    if reference_refuses:
        with pytest.raises(Exception):  # noqa: B017 (the reference's own error types)
            safetensors.torch.load_file(str(path))


def test_the_hostile_writers_only_break_what_they_name(tmp_path: Path) -> None:
    """The same writer without a defect gives a file both loaders accept."""
    path = hostile.safetensors_like(
        tmp_path / "ok.safetensors", order=["scale", "fc.bias", "fc.weight"]
    )
    ours = read_state_dict(path, URI, TINY, Staging(pin=False)).state
    theirs = safetensors.torch.load_file(str(path))
    assert all(torch.equal(ours[n], theirs[n]) for n in theirs)


def test_a_file_for_another_model_is_refused_before_allocation(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(tiny.weights(1, features=64, classes=1000), str(path))
    staging = Staging(pin=False)
    with pytest.raises(StateDictMismatch, match=r"wrong shapes: fc.weight \(1000, 64\)"):
        read_state_dict(path, URI, TINY, staging)
    assert staging._flat is None


def test_reasons_name_a_few_tensors_then_count_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    many = {f"layer{i}.weight": torch.zeros(1) for i in range(40)}
    safetensors.torch.save_file({**tiny.weights(1), **many}, str(path))
    with pytest.raises(StateDictMismatch) as refused:
        read_state_dict(path, URI, TINY, Staging(pin=False))
    assert "unexpected keys: layer0.weight, layer1.weight" in str(refused.value)
    assert "and 35 more" in str(refused.value)


def test_header_limit_grows_with_the_models_tensors_and_stays_small() -> None:
    small = header_limit(TINY)
    big_layout = {
        f"blocks.{i}.attention.query.weight": TINY.layout["fc.weight"] for i in range(5000)
    }
    big = header_limit(Expected(big_layout, "x"))
    assert small < 70_000 < big <= MAX_HEADER_BYTES
    assert header_limit(Expected({f"t{i}": TINY.layout["scale"] for i in range(10**6)}, "x")) == (
        MAX_HEADER_BYTES
    )


def test_a_real_models_file_fits_its_header_limit(tmp_path: Path) -> None:
    import torchvision

    model = torchvision.models.resnet18()
    path = tmp_path / "r.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(path))
    expected = Expected(layout_of(model.state_dict()), "torchvision/resnet18")
    parsed = read_state_dict(path, URI, expected, Staging(pin=False))
    assert torch.equal(parsed.state["fc.weight"], model.state_dict()["fc.weight"])
    length = int.from_bytes(path.read_bytes()[:8], "little")
    assert length < header_limit(expected) / 2


def test_validation_tensor_reader_uses_the_same_checks(tmp_path: Path) -> None:
    path = hostile.overlapping_offsets(tmp_path / "x.safetensors")
    with pytest.raises(FormatError, match="overlaps"):
        read_tensor(path, URI)
    path = hostile.huge_header(tmp_path / "y.safetensors", 100_000)
    with pytest.raises(FormatError, match="more than the 65536 bytes"):
        read_tensor(path, URI)
