"""Parsing while downloading: the staging buffer is filled in the fetch's one pass, a bad
header fails the download early, and anything it cannot stream falls back to the file."""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from devcluster import checkpoints as ck
from devcluster import tiny
from hotswap_contract.wire import Checkpoint
from hotswap_runtime.checkpoint.layouts import Expected, layout_of
from hotswap_runtime.checkpoint.staging import Staging
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.checkpoint.streaming import StreamParser
from hotswap_runtime.errors import IntegrityError, ManifestError

TINY = Expected(layout_of(tiny.weights(1)), tiny.ARCHITECTURE)


def store(tmp_path: Path, cache: str = "cache") -> CheckpointStore:
    return CheckpointStore(tmp_path / cache, 10**8, 10**8, file_roots=(str(tmp_path),))


def streamed(tmp_path: Path, checkpoint: Checkpoint, expected: Expected = TINY):
    parser = StreamParser(expected, Staging(pin=False))
    local = store(tmp_path).fetch_checkpoint(checkpoint, parser=parser)
    return parser.result(len(local.files))


def test_a_download_is_parsed_into_staging_in_the_same_pass(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    sha = ck.save(tiny.weights(1), path)
    result = streamed(tmp_path, Checkpoint(uri=f"file://{path}", sha256=sha))
    assert result is not None
    _, layout, views = result
    assert layout.specs() == dict(TINY.layout)
    assert all(torch.equal(views[k], v) for k, v in tiny.weights(1).items())


def test_shards_stream_back_to_back_into_one_buffer(tmp_path: Path) -> None:
    manifest, sha = ck.save_sharded(tiny.weights(2), tmp_path / "s", 3)
    result = streamed(tmp_path, Checkpoint(uri=f"file://{manifest}", sha256=sha))
    assert result is not None
    flat, layout, views = result
    assert flat.numel() == layout.nbytes == sum(s.nbytes for s in TINY.layout.values())
    assert all(torch.equal(views[k], v) for k, v in tiny.weights(2).items())


def test_what_cannot_be_streamed_falls_back_to_the_file(tmp_path: Path) -> None:
    half = tmp_path / "h.safetensors"
    sha = ck.save({k: v.half() for k, v in tiny.weights(1).items()}, half)
    cast = Expected(TINY.layout, tiny.ARCHITECTURE, cast=True)
    assert streamed(tmp_path, Checkpoint(uri=f"file://{half}", sha256=sha), cast) is None
    path = tmp_path / "m.safetensors"
    sha = ck.save(tiny.weights(1), path)
    checkpoint = Checkpoint(uri=f"file://{path}", sha256=sha)
    assert streamed(tmp_path, checkpoint) is not None
    assert streamed(tmp_path, checkpoint) is None, "a cache hit streams nothing"


def hostile_header(tmp_path: Path, header: bytes, declared: int | None = None) -> Checkpoint:
    length = len(header) if declared is None else declared
    raw = struct.pack("<Q", length) + header + bytes(4 << 20)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(raw)
    import hashlib

    return Checkpoint(uri=f"file://{path}", sha256=hashlib.sha256(raw).hexdigest())


@pytest.mark.parametrize(
    ("header", "declared"),
    [
        (b"{}", 1 << 40),
        (b"{}", 3 << 20),
        (b'{"a": 1, "a": 2}', None),
        (b"[1]", None),
        (json.dumps({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 9]}}).encode(), None),
    ],
)
def test_a_bad_header_only_turns_the_stream_off(
    tmp_path: Path, header: bytes, declared: int | None
) -> None:
    """Unverified bytes are never quoted: the reason comes from the file parse, after
    the sha256 matched (and a file that fails its sha256 says only that)."""
    checkpoint = hostile_header(tmp_path, header, declared)
    assert streamed(tmp_path, checkpoint) is None
    wrong = checkpoint.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(IntegrityError):
        store(tmp_path, "cache2").fetch_checkpoint(
            wrong, parser=StreamParser(TINY, Staging(pin=False))
        )


def test_a_shard_holding_a_tensor_of_another_is_refused_by_the_file_parse(
    tmp_path: Path,
) -> None:
    manifest, _ = ck.save_sharded(tiny.weights(1), tmp_path / "s", 2)
    doc = json.loads(manifest.read_text())
    first, second = doc["shards"]  # every tensor put in the other shard
    doc["weight_map"] = {k: second if v == first else first for k, v in doc["weight_map"].items()}
    manifest.write_text(json.dumps(doc))
    checkpoint = Checkpoint(uri=f"file://{manifest}", sha256=ck.sha256_of(manifest))
    assert streamed(tmp_path, checkpoint) is None
    from hotswap_runtime.checkpoint.weights import read_local

    local = store(tmp_path).fetch_checkpoint(checkpoint)
    with pytest.raises(ManifestError):
        read_local(local, checkpoint.uri, TINY, Staging(pin=False))


def test_streamed_bytes_of_a_file_that_fails_its_sha256_are_never_handed_over(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.safetensors"
    ck.save(tiny.weights(1), path)
    parser = StreamParser(TINY, Staging(pin=False))
    with pytest.raises(IntegrityError):
        store(tmp_path).fetch_checkpoint(
            Checkpoint(uri=f"file://{path}", sha256="0" * 64), parser=parser
        )


def test_a_swap_parses_while_it_downloads_and_reads_the_cache_on_a_hit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hotswap_contract.wire import Revision
    from hotswap_runtime.swap import swapper as swapper_module
    from hotswap_runtime.swap.swapper import Swapper

    file_reads: list[str] = []
    real = swapper_module.read_local

    def counted(local, uri, *args):  # type: ignore[no-untyped-def]
        file_reads.append(uri)
        return real(local, uri, *args)

    monkeypatch.setattr(swapper_module, "read_local", counted)
    s = Swapper(store(tmp_path), torch.device("cpu"), tiny.ALLOWED)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    revisions = []
    for n in (1, 2):
        manifest, sha = ck.save_sharded(tiny.weights(n), tmp_path / f"r{n}", 2)
        revisions.append(Revision.model_validate(ck.revision(n, f"file://{manifest}", sha)))
    for rev in (*revisions, revisions[0].model_copy(update={"revision": 3})):
        s.swap_to(rev)
        with s.lease() as model, torch.no_grad():
            seed = 1 if rev.revision != 2 else 2
            assert torch.equal(model.module(x), tiny.expected(tiny.weights(seed), x))
    assert file_reads == [revisions[0].checkpoint.uri], "only the cache hit is read from disk"


def test_the_nan_screen_runs_while_it_downloads(tmp_path: Path) -> None:
    from hotswap_contract.wire import Revision
    from hotswap_runtime.errors import NonFiniteWeights
    from hotswap_runtime.swap.swapper import Swapper

    bad = dict(tiny.weights(1), scale=torch.tensor([float("nan")]))
    manifest, sha = ck.save_sharded(bad, tmp_path / "nan", 2)
    checkpoint = Checkpoint(uri=f"file://{manifest}", sha256=sha)
    parser = StreamParser(TINY, Staging(pin=False))
    local = store(tmp_path, "c1").fetch_checkpoint(checkpoint, parser=parser)
    assert parser.result(len(local.files)) is not None and parser.non_finite == ["scale"]
    s = Swapper(store(tmp_path, "c2"), torch.device("cpu"), tiny.ALLOWED)
    with pytest.raises(NonFiniteWeights, match="NaN or infinity: scale"):
        s.swap_to(Revision.model_validate(ck.revision(1, checkpoint.uri, sha)))


def _feed(parser: StreamParser, index: int, path: Path, piece: int) -> list[Callable[[], None]]:
    """Each chunk of ``path`` handed to the tap of file ``index`` (made at once, from its
    declared size), as steps to run in any order across files."""
    raw = path.read_bytes()
    tap = parser.tap(index, path.name)(len(raw))
    assert tap is not None
    chunks = [memoryview(raw)[i : i + piece] for i in range(0, len(raw), piece)]
    return [functools.partial(tap, chunk) for chunk in chunks]


def test_shards_that_arrive_out_of_order_stream_into_their_places(tmp_path: Path) -> None:
    """Two shards download at once and may finish in any order: each one's data goes to
    the place the weight map gives it, whatever arrived before."""
    manifest, sha = ck.save_sharded(tiny.weights(3), tmp_path / "s", 3)
    local = store(tmp_path).fetch_checkpoint(Checkpoint(uri=f"file://{manifest}", sha256=sha))
    assert local.manifest is not None
    parser = StreamParser(TINY, Staging(pin=False))
    parser.shards(local.manifest.owners)
    paths = [path for path, _ in local.files]
    steps = {i: _feed(parser, i, paths[i], 7) for i in (2, 0, 1)}  # declared out of order
    while any(steps.values()):  # interleaved: the last shard first, chunk by chunk
        for i in (2, 1, 0):
            if steps[i]:
                steps[i].pop(0)()
    result = parser.result(3)
    assert result is not None
    _, layout, views = result
    assert [slot.name for slot in layout.slots] == list(tiny.weights(3))  # manifest order
    assert all(torch.equal(views[k], v) for k, v in tiny.weights(3).items())


def test_a_shard_without_the_bytes_the_weight_map_gives_it_turns_the_stream_off(
    tmp_path: Path,
) -> None:
    """The weight map puts fc.bias in the first shard, which does not hold it (no shard
    does): its header covers fewer bytes than its place, so nothing streams, and the
    file parse refuses the checkpoint as it did before shards streamed out of order."""
    manifest, _ = ck.save_sharded(tiny.weights(1), tmp_path / "s", 3)
    doc = json.loads(manifest.read_text())
    second = sorted(doc["shards"])[1]
    del doc["shards"][second]
    (tmp_path / "s" / second).unlink()
    doc["weight_map"]["fc.bias"] = sorted(doc["shards"])[0]
    manifest.write_text(json.dumps(doc))
    checkpoint = Checkpoint(uri=f"file://{manifest}", sha256=ck.sha256_of(manifest))
    assert streamed(tmp_path, checkpoint) is None
    from hotswap_runtime.checkpoint.weights import read_local

    local = store(tmp_path).fetch_checkpoint(checkpoint)
    with pytest.raises(ManifestError, match="no shard holds"):
        read_local(local, checkpoint.uri, TINY, Staging(pin=False))
