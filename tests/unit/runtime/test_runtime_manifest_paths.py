"""A shard manifest is judged the same whether its shards stream in as they download or
are read back from the cache (a restart, a rollback): every bad manifest of the class
is refused by both paths with the same code and reason, and a good one serves on both.

Each case starts from a good three-shard checkpoint of ``tiny.weights(2)`` (one tensor
per shard: fc.weight, fc.bias, scale) and breaks its manifest one way. The streamed path
is a fresh pod: an empty cache, every shard downloaded through the streaming parser. The
cached path is the same pod after a restart: its cache already holds every file of the
source folder (by sha256, as earlier fetches left them), so nothing streams.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from devcluster import checkpoints as ck
from devcluster import tiny
from hotswap_contract.wire import Checkpoint, Revision
from hotswap_runtime.checkpoint.layouts import Expected, layout_of
from hotswap_runtime.checkpoint.manifest import MAX_MANIFEST_BYTES, MAX_SHARDS
from hotswap_runtime.checkpoint.staging import Staging
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.checkpoint.streaming import StreamParser
from hotswap_runtime.errors import ManifestError, SwapError
from hotswap_runtime.swap.swapper import Swapper

X = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
SERVED = "served"
LIMIT = 10**8
S1, S2, S3 = (f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3))
Edit = Callable[[Path, dict[str, Any]], dict[str, Any] | bytes]


def _set(d: dict[str, Any], *path_and_value: Any) -> dict[str, Any]:
    *path, key, value = path_and_value
    target = d
    for step in path:
        target = target[step]
    target[key] = value
    return d


def _rename(d: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    d["shards"] = {new if k == old else k: v for k, v in d["shards"].items()}
    d["weight_map"] = {t: new if s == old else s for t, s in d["weight_map"].items()}
    return d


def _gone(folder: Path, d: dict[str, Any], shard: str) -> dict[str, Any]:
    """Shard ``shard`` listed under another name, its bytes nowhere (a cache holding its
    sha256 would serve it: the sha256 pins the bytes, not where they come from)."""
    (folder / shard).unlink()
    return _rename(d, shard, "model-gone.safetensors")


def _resave(folder: Path, d: dict[str, Any], shard: str, state: dict[str, torch.Tensor]) -> Any:
    """Shard ``shard`` rewritten to hold ``state``, its sha256 and size pinned again."""
    sha = ck.save(state, folder / shard)
    return _set(d, "shards", shard, {"sha256": sha, "size": (folder / shard).stat().st_size})


W = tiny.weights(2)
CASES: dict[str, tuple[Edit, str]] = {
    "good": (lambda f, d: d, SERVED),
    # the weight map against what the shards hold
    "tensor in weight_map, in no shard": (
        lambda f, d: _set(d, "weight_map", "ghost.weight", S1),
        "bad_manifest",
    ),
    "tensor in a shard, not in weight_map": (
        lambda f, d: _resave(f, d, S3, {"scale": W["scale"], "extra": W["fc.bias"]}),
        "bad_manifest",
    ),
    "tensor in another shard than weight_map says": (
        lambda f, d: _set(_set(d, "weight_map", "fc.bias", S3), "weight_map", "scale", S2),
        "bad_manifest",
    ),
    "tensor in two shards": (
        lambda f, d: _resave(f, d, S3, {"scale": W["scale"], "fc.weight": W["fc.weight"]}),
        "bad_manifest",
    ),
    "shard in no file": (lambda f, d: _gone(f, d, S3), "not_found"),
    "shard holding no tensor of weight_map": (
        lambda f, d: _set(d, "shards", "extra.safetensors", d["shards"][S1]),
        "bad_manifest",
    ),
    "weight_map naming an unlisted shard": (
        lambda f, d: _set(d, "weight_map", "scale", "other.safetensors"),
        "bad_manifest",
    ),
    # shard names
    "path traversal": (lambda f, d: _rename(d, S1, f"../{f.name}/{S1}"), "bad_manifest"),
    "absolute path": (lambda f, d: _rename(d, S1, str(f / S1)), "bad_manifest"),
    "percent-encoded dots": (lambda f, d: _rename(d, S1, f"%2e%2e/{S1}"), "bad_manifest"),
    "another host": (lambda f, d: _rename(d, S1, f"file://elsewhere{f / S1}"), "bad_manifest"),
    "not a safetensors shard": (lambda f, d: _rename(d, S1, "model.pt"), "bad_manifest"),
    # the shards' pins
    "sha256 of other bytes": (
        lambda f, d: _set(d, "shards", S2, "sha256", "0" * 64),
        "sha256_mismatch",
    ),
    "sha256 in capitals": (
        lambda f, d: _set(d, "shards", S2, "sha256", d["shards"][S2]["sha256"].upper()),
        "bad_manifest",
    ),
    "sha256 not a string": (lambda f, d: _set(d, "shards", S2, "sha256", 7), "bad_manifest"),
    "size smaller than the shard": (
        lambda f, d: _set(d, "shards", S2, "size", d["shards"][S2]["size"] - 1),
        "too_large",
    ),
    "size a string": (lambda f, d: _set(d, "shards", S2, "size", "100"), "bad_manifest"),
    "size true": (lambda f, d: _set(d, "shards", S2, "size", True), "bad_manifest"),
    "size negative": (lambda f, d: _set(d, "shards", S2, "size", -1), "bad_manifest"),
    "sizes over the limit": (
        lambda f, d: _set(d, "shards", S2, "size", LIMIT),
        "too_large",
    ),
    # the document
    "empty weight_map": (lambda f, d: _set(d, "weight_map", {}), "bad_manifest"),
    "empty shards": (lambda f, d: _set(d, "shards", {}), "bad_manifest"),
    "weight_map a list": (lambda f, d: _set(d, "weight_map", [S1]), "bad_manifest"),
    "weight_map to a number": (lambda f, d: _set(d, "weight_map", "scale", 3), "bad_manifest"),
    "metadata a string": (lambda f, d: _set(d, "metadata", "x"), "bad_manifest"),
    "another key": (lambda f, d: _set(d, "signature", "x"), "bad_manifest"),
    "no shards": (lambda f, d: {"weight_map": d["weight_map"]}, "bad_manifest"),
    "too many shards": (
        lambda f, d: _set(
            d, "shards", {f"s{i}.safetensors": d["shards"][S1] for i in range(MAX_SHARDS + 1)}
        ),
        "bad_manifest",
    ),
    "a key twice": (
        lambda f, d: json.dumps(d).replace('"weight_map"', '"shards": {}, "weight_map"').encode(),
        "bad_manifest",
    ),
    "NaN": (lambda f, d: json.dumps(d)[:-1].encode() + b', "metadata": NaN}', "bad_manifest"),
    "not UTF-8": (lambda f, d: b'{"weight_map": "\xff"}', "bad_manifest"),
    "not an object": (lambda f, d: b"[1, 2]", "bad_manifest"),
    "over the manifest limit": (
        lambda f, d: b"{" + b" " * MAX_MANIFEST_BYTES + b"}",
        "too_large",
    ),
}


def bad_checkpoint(tmp_path: Path, case: str) -> tuple[Path, Checkpoint]:
    """The source folder and the checkpoint of ``case``'s manifest."""
    folder = tmp_path / "src"
    manifest, _ = ck.save_sharded(W, folder, 3)
    assert list(json.loads(manifest.read_text())["shards"]) == [S1, S2, S3]
    edited = CASES[case][0](folder, json.loads(manifest.read_text()))
    manifest.write_bytes(edited if isinstance(edited, bytes) else json.dumps(edited).encode())
    return folder, Checkpoint(uri=manifest.as_uri(), sha256=ck.sha256_of(manifest))


def store(tmp_path: Path, cache: str) -> CheckpointStore:
    return CheckpointStore(tmp_path / cache, 10 * LIMIT, LIMIT, file_roots=(str(tmp_path),))


def warm(tmp_path: Path, folder: Path) -> CheckpointStore:
    """A store whose cache holds every file of ``folder`` already (a restarted pod)."""
    cache = tmp_path / "warm"
    cache.mkdir()
    for path in folder.iterdir():
        shutil.copyfile(path, cache / ck.sha256_of(path))
    return store(tmp_path, "warm")


def outcome(checkpoint_store: CheckpointStore, checkpoint: Checkpoint) -> str:
    """What a fresh swapper on ``checkpoint_store`` makes of ``checkpoint``."""
    revision = Revision.model_validate(ck.revision(1, checkpoint.uri, checkpoint.sha256))
    swapper = Swapper(checkpoint_store, torch.device("cpu"), tiny.ALLOWED)
    try:
        swapper.swap_to(revision)
    except SwapError as exc:
        return f"{exc.code}: {exc}"
    finally:
        checkpoint_store.close()
    with swapper.lease() as model, torch.no_grad():
        assert torch.equal(model.module(X), tiny.expected(W, X)), "served other weights"
    return SERVED


@pytest.mark.parametrize("case", list(CASES))
def test_streamed_and_cached_shards_refuse_the_same_manifests(tmp_path: Path, case: str) -> None:
    folder, checkpoint = bad_checkpoint(tmp_path, case)
    streamed = outcome(store(tmp_path, "fresh"), checkpoint)
    cached = outcome(warm(tmp_path, folder), checkpoint)
    assert streamed == cached, f"streamed: {streamed}\ncached: {cached}"
    assert streamed.partition(":")[0] == CASES[case][1], streamed
    assert len(streamed) < 400


def test_the_streamed_path_itself_refuses_a_tensor_no_shard_holds(tmp_path: Path) -> None:
    """Parsed while downloading, the shards are checked against the weight map by the
    parser once their sha256 matched, not only by the cached path it may fall back to."""
    _, checkpoint = bad_checkpoint(tmp_path, "tensor in weight_map, in no shard")
    expected = Expected(layout_of(W), tiny.ARCHITECTURE)
    parser = StreamParser(expected, Staging(pin=False))
    local = store(tmp_path, "fresh").fetch_checkpoint(checkpoint, parser=parser)
    with pytest.raises(ManifestError, match=r"weight_map names ghost\.weight, which no shard"):
        parser.result(len(local.files))
