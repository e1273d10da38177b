"""Swapper and desired-revision path, in process with real files and the tiny model."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from devcluster import checkpoints as ck
from devcluster import tiny
from hotswap_contract.wire import Revision
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.control.desired import Reconciler
from hotswap_runtime.errors import ModelNotReady, StateDictMismatch, ValidationFailed
from hotswap_runtime.swap import swapper as swapper_module
from hotswap_runtime.swap.swapper import Swapper
from tests.fixtures_runtime.server import wait_for

X = torch.tensor([[1.0, 2.0, 3.0, 4.0]])


def revision(tmp_path: Path, number: int, seed: int, state=None) -> Revision:
    path = tmp_path / f"r{number}.safetensors"
    sha = ck.save(state if state is not None else tiny.weights(seed), path)
    return Revision.model_validate(ck.revision(number, f"file://{path}", sha))


def make_swapper(tmp_path: Path, mode: str = "auto") -> Swapper:
    torch.set_num_threads(1)
    store = CheckpointStore(tmp_path / "cache", 10**8, 10**8, file_roots=(str(tmp_path),))
    return Swapper(store, torch.device("cpu"), tiny.ALLOWED, mode)


def answer(swapper: Swapper) -> tuple[int, torch.Tensor]:
    with swapper.lease() as model, torch.no_grad():
        return model.revision.revision, model.module(X)


@pytest.mark.parametrize("mode", ["auto", "inplace"])
def test_swaps_reuse_the_standby_and_serve_the_right_weights(tmp_path: Path, mode: str) -> None:
    swapper = make_swapper(tmp_path, mode)
    with pytest.raises(ModelNotReady):
        answer(swapper)
    for number in range(1, 6):
        swapper.swap_to(revision(tmp_path, number, seed=number))
        got_rev, out = answer(swapper)
        assert got_rev == number
        assert torch.equal(out, tiny.expected(tiny.weights(number), X))
    assert swapper.last_kind == ("inplace" if mode == "inplace" else "standby")
    if mode == "auto":  # a reused standby holds its weights in one flat buffer: one copy
        current = swapper.current()
        assert current is not None and current.flat is not None
        storages = {t.untyped_storage().data_ptr() for t in current.targets.values()}
        assert storages == {current.flat.untyped_storage().data_ptr()}


def test_on_the_cpu_a_standby_takes_the_parsed_buffer_instead_of_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No bulk or per-tensor copy into a reused standby: its tensors are pointed at the
    staging buffer the checkpoint was parsed into, and the three buffers (serving,
    standby, staging) rotate, swap after swap, without growing."""
    swapper = make_swapper(tmp_path)
    for number in (1, 2, 3, 4):  # two fresh builds, then each standby's first reuse
        swapper.swap_to(revision(tmp_path, number, seed=number))

    def no_copy(*args: object) -> None:
        raise AssertionError("copied into the standby")

    monkeypatch.setattr(swapper_module, "copy_flat", no_copy)
    monkeypatch.setattr(swapper_module, "copy_tensors", no_copy)
    buffers = set()
    for number in range(5, 12):
        swapper.swap_to(revision(tmp_path, number, seed=number))
        assert swapper.last_kind == "standby"
        got_rev, out = answer(swapper)
        assert got_rev == number
        assert torch.equal(out, tiny.expected(tiny.weights(number), X))
        current = swapper.current()
        assert current is not None and current.flat is not None
        storages = {t.untyped_storage().data_ptr() for t in current.targets.values()}
        assert storages == {current.flat.untyped_storage().data_ptr()}
        buffers.add(current.flat.data_ptr())
    assert len(buffers) <= 3, "a buffer was allocated per swap"


def test_a_lease_keeps_its_model_until_the_request_ends(tmp_path: Path) -> None:
    swapper = make_swapper(tmp_path)
    swapper.swap_to(revision(tmp_path, 1, seed=1))
    with swapper.lease() as held:
        swapper.swap_to(revision(tmp_path, 2, seed=2))
        assert swapper.current() is not held and held.retired
        with torch.no_grad():  # the old weights are untouched while the lease lasts
            assert torch.equal(held.module(X), tiny.expected(tiny.weights(1), X))
    swapper.swap_to(revision(tmp_path, 3, seed=3))
    assert swapper.last_kind == "standby", "the released model became the standby"


def test_failure_keeps_serving_and_standby_survives(tmp_path: Path) -> None:
    swapper = make_swapper(tmp_path)
    swapper.swap_to(revision(tmp_path, 1, seed=1))
    swapper.swap_to(revision(tmp_path, 2, seed=2))
    bad = dict(tiny.weights(3))
    bad.pop("scale")
    with pytest.raises(StateDictMismatch, match="missing keys: scale"):
        swapper.swap_to(revision(tmp_path, 3, seed=3, state=bad))
    assert answer(swapper)[0] == 2
    swapper.swap_to(revision(tmp_path, 4, seed=4))
    assert swapper.last_kind == "standby"


class Recorder:
    def __init__(self) -> None:
        self.records = []
        self.configs = []

    def swap_finished(self, record) -> None:
        self.records.append(record)

    def config_rejected(self, failure) -> None:
        self.configs.append(failure)

    def status_changed(self, status) -> None:
        return None


def test_desired_path_is_idempotent_and_ignores_stale_generations(tmp_path: Path) -> None:
    swapper = make_swapper(tmp_path)
    seen = Recorder()
    reconciler = Reconciler(swapper, [seen])
    reconciler.start()
    try:
        one, two = revision(tmp_path, 1, seed=1), revision(tmp_path, 2, seed=2)
        reconciler.offer(one, generation=1, source="file")
        wait_for(lambda: len(seen.records) == 1, 30, "the first swap")
        reconciler.offer(one, generation=2, source="api")  # same key: no swap
        reconciler.offer(two, generation=1, source="file")  # stale generation: ignored
        reconciler.offer(two, generation=3, source="api")
        wait_for(lambda: len(seen.records) == 2, 30, "the second swap")
        reconciler.offer(two, generation=4, source="file")
        status = reconciler.status()
        assert [r.result for r in seen.records] == ["ok", "ok"]
        assert status.serving is not None and status.serving.revision.revision == 2
        assert status.config_generation == 4 and status.state.value == "Serving"
    finally:
        reconciler.stop()
    assert len(seen.records) == 2


def test_newer_offer_supersedes_a_load(tmp_path: Path) -> None:
    swapper = make_swapper(tmp_path)
    seen = Recorder()
    reconciler = Reconciler(swapper, [seen])
    gate = threading.Event()
    first = revision(tmp_path, 1, seed=1)
    real_fetch = swapper.store.fetch

    def gated_fetch(checkpoint, *args, **kwargs):  # holds revision 1 mid-load
        if checkpoint.sha256 == first.checkpoint.sha256:
            gate.wait(30)
        return real_fetch(checkpoint, *args, **kwargs)

    swapper.store.fetch = gated_fetch  # type: ignore[method-assign]
    reconciler.start()
    try:
        reconciler.offer(first, 1, "file")
        wait_for(lambda: reconciler.status().state.value == "Loading", 10, "loading")
        reconciler.offer(revision(tmp_path, 2, seed=2), 2, "file")
        gate.set()
        wait_for(lambda: len(seen.records) == 2, 30, "both attempts")
    finally:
        reconciler.stop()
    assert [r.result for r in seen.records] == ["superseded", "ok"]
    assert answer(swapper)[0] == 2


def test_validation_with_expected_outputs(tmp_path: Path) -> None:
    swapper = make_swapper(tmp_path)
    swapper.swap_to(revision(tmp_path, 1, seed=1))
    x = torch.tensor([[1.0, 0.0, -1.0, 2.0]])
    good = tiny.expected(tiny.weights(2), x)

    def with_validation(number: int, expected: torch.Tensor) -> Revision:
        base = revision(tmp_path, number, seed=2).model_dump(by_alias=True)
        files = {}
        for name, tensor in (("input", x), ("expected", expected)):
            path = tmp_path / f"{name}{number}.safetensors"
            files[name] = {"uri": f"file://{path}", "sha256": ck.save({name: tensor}, path)}
        base["validation"] = {**files, "tolerance": 1e-3}
        return Revision.model_validate(base)

    with pytest.raises(ValidationFailed, match="differs from expected by 1 > tolerance"):
        swapper.swap_to(with_validation(2, good + 1))
    assert answer(swapper)[0] == 1
    swapper.swap_to(with_validation(3, good))
    assert answer(swapper)[0] == 3
