"""Revision.validation: the swapper runs the probe input and compares with the expected
outputs; a candidate that disagrees beyond the tolerance fails and the old one serves."""

from pathlib import Path

import pytest
import torch

from devcluster import checkpoints, tiny
from hotswap_contract.wire import Revision
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.errors import ValidationFailed
from hotswap_runtime.swap.swapper import Swapper

torch.set_num_threads(1)


def artifact(tmp: Path, name: str, tensor: torch.Tensor) -> dict[str, str]:
    path = tmp / f"{name}.safetensors"
    sha = checkpoints.save({"t": tensor}, path)
    return {"uri": path.as_uri(), "sha256": sha}


def revision(tmp: Path, number: int, seed: int, expected_seed: int, tolerance: float) -> Revision:
    state = tiny.weights(seed)
    path = tmp / f"w{seed}.safetensors"
    sha = checkpoints.save(state, path)
    x = torch.arange(8, dtype=torch.float32).reshape(2, tiny.FEATURES)
    expected = tiny.expected(tiny.weights(expected_seed), x)
    raw = checkpoints.revision(number, path.as_uri(), sha)
    raw["validation"] = {
        "input": artifact(tmp, "probe", x),
        "expected": artifact(tmp, f"expected{expected_seed}", expected),
        "tolerance": tolerance,
    }
    return Revision.model_validate(raw)


@pytest.fixture
def swapper(tmp_path: Path) -> Swapper:
    store = CheckpointStore(tmp_path / "cache", 1 << 30, 1 << 30, file_roots=(str(tmp_path),))
    return Swapper(store, torch.device("cpu"), tiny.ALLOWED)


def test_matching_outputs_pass(swapper: Swapper, tmp_path: Path) -> None:
    swapper.swap_to(revision(tmp_path, 1, seed=1, expected_seed=1, tolerance=0.0))
    current = swapper.current()
    assert current is not None and current.revision.revision == 1


def test_wrong_outputs_fail_and_the_old_revision_keeps_serving(
    swapper: Swapper, tmp_path: Path
) -> None:
    swapper.swap_to(revision(tmp_path, 1, seed=1, expected_seed=1, tolerance=0.0))
    with pytest.raises(ValidationFailed, match="revision 2: validation output differs"):
        swapper.swap_to(revision(tmp_path, 2, seed=2, expected_seed=1, tolerance=1e-3))
    current = swapper.current()
    assert current is not None and current.revision.revision == 1


def test_a_generous_tolerance_accepts_close_outputs(swapper: Swapper, tmp_path: Path) -> None:
    swapper.swap_to(revision(tmp_path, 1, seed=2, expected_seed=1, tolerance=1e6))
    current = swapper.current()
    assert current is not None and current.revision.revision == 1
