"""Hostile checkpoints and models against the Swapper: every failure is a SwapError with a
short reason, the old model keeps serving, and no failure leaves state that a later,
legitimate checkpoint inherits (outputs exactly equal to a fresh model's)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from devcluster import checkpoints as ck
from devcluster import tiny
from hotswap_contract.wire import Revision
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.errors import (
    ArchitectureError,
    FetchError,
    ModelTooLarge,
    StateDictMismatch,
    SwapError,
    ValidationFailed,
)
from hotswap_runtime.swap.swapper import Swapper
from tests.fixtures_runtime import hostile

X = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-3.0, 0.0, 2.0, -1.0]])
MakeRevision = Callable[[Path, int], Revision]


def revision_for(path: Path, number: int, **model: Any) -> Revision:
    raw = ck.revision(number, f"file://{path}", ck.sha256_of(path))
    raw["model"].update(model)
    return Revision.model_validate(raw)


def make_swapper(tmp_path: Path, mode: str = "auto") -> Swapper:
    torch.set_num_threads(1)
    store = CheckpointStore(tmp_path / "cache", 10**9, 10**9, file_roots=(str(tmp_path),))
    return Swapper(store, torch.device("cpu"), hostile.ALLOWED, mode)


def answer(swapper: Swapper) -> tuple[int, torch.Tensor]:
    with swapper.lease() as model, torch.no_grad():
        return model.revision.revision, model.module(X)


def reference(path: Path) -> torch.Tensor:
    """Outputs of a fresh tiny model loaded from ``path`` by the reference loaders."""
    if path.suffix == ".safetensors":
        state = safetensors.torch.load_file(str(path))
    else:
        state = torch.load(path, weights_only=True)
    return tiny.expected(state, X)


def assert_clean(swapper: Swapper) -> None:
    """No request is held, no lease is left over, nothing is staged."""
    assert not swapper.held
    current = swapper.current()
    assert current is not None and current.leases == 0
    assert swapper._staging._flat is None and not swapper._staging._buffers


# ---- legitimate checkpoints, in several layouts and formats ---------------------------


def legit_library(tmp: Path, n: int) -> Revision:
    path = tmp / f"legit{n}.safetensors"
    ck.save(tiny.weights(n), path)
    return revision_for(path, n)


def legit_reordered(tmp: Path, n: int) -> Revision:
    order = ["scale", "fc.weight", "fc.bias"] if n % 2 else ["fc.bias", "scale", "fc.weight"]
    path = hostile.safetensors_like(tmp / f"legit{n}.safetensors", tiny.weights(n), order)
    return revision_for(path, n)


def legit_pt(tmp: Path, n: int) -> Revision:
    path = tmp / f"legit{n}.pt"
    ck.save(tiny.weights(n), path)
    return revision_for(path, n)


def legit_stride0(tmp: Path, n: int) -> Revision:
    return revision_for(hostile.stride0_right_shape_pt(tmp / f"legit{n}.pt"), n)


def legit_cast(tmp: Path, n: int) -> Revision:
    path = tmp / f"legit{n}.safetensors"
    ck.save({k: v.half() for k, v in tiny.weights(n).items()}, path)
    return revision_for(path, n, castWeights=True)


LEGIT: dict[str, MakeRevision] = {
    "library safetensors": legit_library,
    "reordered safetensors": legit_reordered,
    "torch.save": legit_pt,
    "stride-0 view of the right shape": legit_stride0,
    "float16 with castWeights": legit_cast,
}


# ---- hostile ones: every class the runtime refuses --------------------------------------


def _file(write: Callable[[Path], Path], suffix: str) -> MakeRevision:
    def make(tmp: Path, n: int) -> Revision:
        return revision_for(write(tmp / f"hostile{n}{suffix}"), n)

    return make


def _spec(architecture: str = tiny.ARCHITECTURE, **args: Any) -> MakeRevision:
    def make(tmp: Path, n: int) -> Revision:
        path = tmp / f"weights{n}.safetensors"
        ck.save(tiny.weights(n), path)
        raw = ck.revision(n, f"file://{path}", ck.sha256_of(path), architecture=architecture)
        raw["model"]["args"] = args
        return Revision.model_validate(raw)

    return make


def _nan(tmp: Path, n: int) -> Revision:
    state = dict(tiny.weights(n))
    state["fc.bias"] = torch.tensor([0.0, float("nan"), 1.0])
    path = tmp / f"nan{n}.safetensors"
    ck.save(state, path)
    return revision_for(path, n)


def _wrong_expected(tmp: Path, n: int) -> Revision:
    """Legitimate weights that fail validation after they were copied into the standby."""
    base = legit_reordered(tmp, n).model_dump(by_alias=True)
    files = {}
    for name, tensor in (("input", X), ("expected", tiny.expected(tiny.weights(n), X) + 1)):
        path = tmp / f"{name}{n}.safetensors"
        files[name] = {"uri": f"file://{path}", "sha256": ck.save({name: tensor}, path)}
    base["validation"] = {**files, "tolerance": 0.5}
    return Revision.model_validate(base)


def _wrong_shapes(tmp: Path, n: int) -> Revision:
    path = tmp / f"shapes{n}.pt"
    ck.save({**tiny.weights(n), "fc.weight": torch.ones(3, 5)}, path)
    return revision_for(path, n)


HOSTILE: dict[str, MakeRevision] = {
    "overlapping offsets": _file(hostile.overlapping_offsets, ".safetensors"),
    "duplicate names": _file(hostile.duplicate_names, ".safetensors"),
    "hole": _file(hostile.hole, ".safetensors"),
    "reversed offsets": _file(hostile.reversed_offsets, ".safetensors"),
    "wrong nbytes": _file(hostile.wrong_nbytes, ".safetensors"),
    "unknown dtype": _file(hostile.unknown_dtype, ".safetensors"),
    "trailing bytes": _file(hostile.trailing_bytes, ".safetensors"),
    "declared header past the end": _file(hostile.huge_declared_header, ".safetensors"),
    "huge header": _file(lambda p: hostile.huge_header(p, 1 << 20), ".safetensors"),
    "float16 weights": _file(lambda p: hostile.as_dtype(p, torch.float16), ".safetensors"),
    "int64 weights": _file(lambda p: hostile.as_dtype(p, torch.int64), ".safetensors"),
    "stride-0 huge shape": _file(hostile.stride0_pt, ".pt"),
    "deflate bomb": _file(lambda p: hostile.deflate_bomb_pt(p, 8 << 20), ".pt"),
    "bytearray bomb": _file(hostile.bytearray_bomb_pt, ".pt"),
    "legacy format": _file(hostile.legacy_pt, ".pt"),
    "too many records": _file(hostile.many_records_pt, ".pt"),
    "duplicate records": _file(hostile.duplicate_records_pt, ".pt"),
    "wrong shapes": _wrong_shapes,
    "NaN weights": _nan,
    "validation mismatch": _wrong_expected,
    "giant model args": _spec(classes=10**9),
    "factory exits": _spec(f"{hostile.HOSTILE}:make_exiting"),
    "forward exits": _spec(f"{hostile.HOSTILE}:make_exiting_forward"),
    "unknown architecture": _spec("python/tests.fixtures_runtime.nowhere:make"),
}


@pytest.mark.parametrize("mode", ["auto", "inplace"])
@pytest.mark.parametrize("case", list(HOSTILE))
def test_each_hostile_revision_fails_and_the_old_one_serves(
    tmp_path: Path, case: str, mode: str
) -> None:
    swapper = make_swapper(tmp_path, mode)
    for n in (1, 2):  # a serving model and, in auto mode, a standby
        swapper.swap_to(legit_library(tmp_path, n))
    with pytest.raises(SwapError) as failed:
        swapper.swap_to(HOSTILE[case](tmp_path, 3))
    assert len(str(failed.value)) <= 400 and "\n" not in str(failed.value)
    got, out = answer(swapper)
    assert got == 2 and torch.equal(out, tiny.expected(tiny.weights(2), X))
    assert_clean(swapper)


@pytest.mark.parametrize("mode", ["auto", "inplace"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_after_any_failures_a_legit_checkpoint_is_served_exactly(
    tmp_path: Path, mode: str, seed: int
) -> None:
    """Random sequences of hostile revisions between legitimate ones, in several layouts
    and formats, sometimes with a request in flight: every legitimate one serves exactly
    what a fresh model loaded from its file answers, and every hostile one is refused."""
    rng = random.Random(seed)
    swapper = make_swapper(tmp_path, mode)
    numbers = iter(range(1, 10_000))
    accepted: list[str] = []
    for _ in range(14):
        for case in rng.sample(list(HOSTILE), rng.randint(1, 3)):
            try:
                swapper.swap_to(HOSTILE[case](tmp_path, next(numbers)))
            except SwapError:
                pass
            else:
                accepted.append(case)
        for _ in range(rng.randint(1, 2)):  # a failure's effect may show a swap later
            n = next(numbers)
            legit = LEGIT[rng.choice(list(LEGIT))](tmp_path, n)
            swap_legit(swapper, legit, drain=mode == "auto" and rng.random() < 0.3)
            got, out = answer(swapper)
            path = Path(legit.checkpoint.uri.removeprefix("file://"))
            assert got == n
            assert torch.equal(out, reference(path)), f"revision {n} ({path.name}) is wrong"
            assert not swapper.held and swapper.current().leases == 0
    assert not accepted, f"hostile revisions were served: {accepted}"


def swap_legit(swapper: Swapper, legit: Revision, drain: bool) -> None:
    """Swap, with a request in flight on the old model when ``drain`` (standby mode only:
    an in-place copy waits for requests, which here would be this thread)."""
    if drain and swapper.current() is not None:
        with swapper.lease():
            swapper.swap_to(legit)
    else:
        swapper.swap_to(legit)


@pytest.mark.parametrize("mode", ["auto", "inplace"])
def test_overlapping_offsets_then_a_legit_file_serves_the_legit_weights(
    tmp_path: Path, mode: str
) -> None:
    """The regression: an overlapping file once rebound the standby into aliased views."""
    swapper = make_swapper(tmp_path, mode)
    swapper.swap_to(legit_library(tmp_path, 1))
    swapper.swap_to(legit_library(tmp_path, 2))
    refused = False
    try:
        swapper.swap_to(HOSTILE["overlapping offsets"](tmp_path, 3))
    except SwapError as exc:
        refused = "overlaps the tensor before it" in str(exc)
    for n in (4, 5, 6):
        swapper.swap_to(legit_library(tmp_path, n))
        assert torch.equal(answer(swapper)[1], tiny.expected(tiny.weights(n), X)), n
    assert refused


def test_dtypes_are_refused_unless_cast_is_set(tmp_path: Path) -> None:
    swapper = make_swapper(tmp_path)
    swapper.swap_to(legit_library(tmp_path, 1))
    with pytest.raises(StateDictMismatch) as refused:
        swapper.swap_to(HOSTILE["float16 weights"](tmp_path, 2))
    assert (
        "fc.weight is float16, the model's is float32; save the checkpoint in float32 or set "
        in (str(refused.value))
    )
    with pytest.raises(StateDictMismatch, match=r"fc\.weight is int64"):
        swapper.swap_to(HOSTILE["int64 weights"](tmp_path, 3))
    swapper.swap_to(legit_cast(tmp_path, 4))
    current = swapper.current()
    assert current is not None and current.module.fc.weight.dtype == torch.float32
    assert torch.equal(answer(swapper)[1], tiny.expected(tiny.weights(4), X))


def test_model_too_large_is_refused_before_it_is_built(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cache", 10**8, 10**8, file_roots=(str(tmp_path),))
    swapper = Swapper(store, torch.device("cpu"), hostile.ALLOWED, max_model_bytes=1000)
    swapper.swap_to(legit_library(tmp_path, 1))
    with pytest.raises(ModelTooLarge, match="over this runtime's limit of 1000"):
        swapper.swap_to(_spec(classes=100)(tmp_path, 2))
    assert answer(swapper)[0] == 1


def test_exits_from_factories_and_forwards_become_swap_errors(tmp_path: Path) -> None:
    swapper = make_swapper(tmp_path)
    swapper.swap_to(legit_library(tmp_path, 1))
    with pytest.raises(ArchitectureError, match="SystemExit"):
        swapper.swap_to(HOSTILE["factory exits"](tmp_path, 2))
    with pytest.raises(ValidationFailed, match="revision 3: validate failed: SystemExit: 3"):
        swapper.swap_to(HOSTILE["forward exits"](tmp_path, 3))
    assert_clean(swapper)


def test_anything_raised_in_any_phase_becomes_a_swap_error(tmp_path: Path) -> None:
    swapper = make_swapper(tmp_path)
    swapper.swap_to(legit_library(tmp_path, 1))
    real_fetch = swapper.store.fetch

    def exiting_fetch(checkpoint, *args, **kwargs):
        raise SystemExit("fetch went away")

    swapper.store.fetch = exiting_fetch  # type: ignore[method-assign]
    with pytest.raises(FetchError, match="fetch failed: SystemExit: fetch went away"):
        swapper.swap_to(legit_library(tmp_path, 2))
    swapper.store.fetch = real_fetch  # type: ignore[method-assign]

    def interrupted(checkpoint, *args, **kwargs):
        raise KeyboardInterrupt

    swapper.store.fetch = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        swapper.swap_to(legit_library(tmp_path, 3))
    swapper.store.fetch = real_fetch  # type: ignore[method-assign]
    swapper.swap_to(legit_library(tmp_path, 4))
    assert answer(swapper)[0] == 4
    assert_clean_after_success(swapper)


def assert_clean_after_success(swapper: Swapper) -> None:
    current = swapper.current()
    assert not swapper.held and current is not None and current.leases == 0


def test_an_aliased_standby_is_discarded_not_reused(tmp_path: Path) -> None:
    """Should a standby's tensors ever share memory, it is rebuilt, never filled."""
    swapper = make_swapper(tmp_path)
    for n in (1, 2):
        swapper.swap_to(legit_library(tmp_path, n))
    standby = swapper._leases._standby
    assert standby is not None
    weight = standby.module.fc.weight
    standby.module.fc.bias.data = weight.data.view(-1)[9:12]  # alias bias into weight
    swapper.swap_to(legit_reordered(tmp_path, 3))
    assert swapper.last_kind == "fresh"
    assert torch.equal(answer(swapper)[1], tiny.expected(tiny.weights(3), X))


def test_standby_follows_a_layout_change_with_one_flat_buffer(tmp_path: Path) -> None:
    """Two modules take turns as the standby; each is re-laid out when the file's layout
    changes under it, and always ends up as views of one flat buffer."""
    swapper = make_swapper(tmp_path)
    makers = [legit_library, legit_library, legit_library, legit_reordered, legit_reordered]
    layouts: dict[int, list[object]] = {}
    for n, make in enumerate([*makers, legit_library, legit_library], 1):
        swapper.swap_to(make(tmp_path, n))
        assert torch.equal(answer(swapper)[1], tiny.expected(tiny.weights(n), X))
        current = swapper.current()
        assert current is not None
        if n > 2:  # revision 1's model is the first standby
            assert swapper.last_kind == "standby" and current.flat is not None
            storages = {t.untyped_storage().data_ptr() for t in current.targets.values()}
            assert storages == {current.flat.untyped_storage().data_ptr()}
            layouts.setdefault(id(current.module), []).append(current.flat_layout)
    relaid = [seen for seen in layouts.values() if len(set(map(id, seen))) > 1]
    assert relaid, "some module was re-laid out"
