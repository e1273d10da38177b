"""Sharded checkpoints: a hostile manifest and hostile shards are refused before any
shard is fetched or any tensor allocated; good ones swap like a single file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from devcluster import checkpoints as ck
from devcluster import tiny
from hotswap_contract.wire import Checkpoint, Revision
from hotswap_runtime.checkpoint.manifest import MAX_SHARDS, read_manifest, shard_uri
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.errors import (
    CheckpointTooLarge,
    FormatError,
    IntegrityError,
    ManifestError,
    StateDictMismatch,
)
from hotswap_runtime.swap.swapper import Swapper

X = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
SHA = "a" * 64


def manifest_file(tmp_path: Path, doc: dict[str, Any] | bytes) -> tuple[Path, Checkpoint]:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    path = tmp_path / "m.safetensors.index.json"
    path.write_bytes(raw)
    sha = hashlib.sha256(raw).hexdigest()
    return path, Checkpoint(uri=f"file://{path}", sha256=sha)


def doc(shards: dict[str, Any], weight_map: dict[str, str] | None = None) -> dict[str, Any]:
    if weight_map is None:
        weight_map = {f"t{i}": name for i, name in enumerate(shards)}
    return {"metadata": {"total_size": 1}, "weight_map": weight_map, "shards": shards}


def entry(size: int = 100, sha: str = SHA) -> dict[str, Any]:
    return {"sha256": sha, "size": size}


def refused(tmp_path: Path, d: dict[str, Any] | bytes, limit: int = 10**6) -> str:
    path, checkpoint = manifest_file(tmp_path, d)
    with pytest.raises((ManifestError, CheckpointTooLarge)) as e:
        read_manifest(path, checkpoint, limit)
    return str(e.value)


def test_a_manifest_resolves_shards_next_to_it_with_the_checkpoint_secret() -> None:
    base = "s3://bucket/models/m.safetensors.index.json"
    assert shard_uri(base, "a.safetensors", "x") == "s3://bucket/models/a.safetensors"
    assert shard_uri(base, "sub/a.safetensors", "x") == "s3://bucket/models/sub/a.safetensors"
    same_host = "s3://bucket/other/b.safetensors"
    assert shard_uri(base, same_host, "x") == same_host
    https = "https://user:pw@h.example/m/index.json?sig=1"
    assert shard_uri(https, "a.safetensors", "x") == "https://user:pw@h.example/m/a.safetensors"


@pytest.mark.parametrize(
    "ref",
    [
        "../a.safetensors",
        "sub/../../a.safetensors",
        "/etc/a.safetensors",
        "%2e%2e/a.safetensors",
        "a//b.safetensors",
        ".hidden.safetensors",
        "a.safetensors?x=1",
        "a.pt",
        "s3://other-bucket/a.safetensors",
        "https://h.example/a.safetensors",
        "file:///etc/a.safetensors",
        "s3://bucket/m/../a.safetensors",
        "s3://bucket/a.safetensors?versionId=1",
        "/".join(["d"] * 9) + "/a.safetensors",
    ],
)
def test_shard_references_with_path_tricks_or_other_hosts_are_refused(ref: str) -> None:
    with pytest.raises(ManifestError, match="shard"):
        shard_uri("s3://bucket/m/index.json", ref, "shard")


@pytest.mark.parametrize(
    ("d", "reason"),
    [
        (doc({}), "1 to"),
        (doc({"a.safetensors": entry(sha="A" * 64)}), "sha256"),
        (doc({"a.safetensors": entry(size=-1)}), "size"),
        (doc({"a.safetensors": {"sha256": SHA}}), "size"),
        (doc({"a.safetensors": {**entry(), "url": "x"}}), "sha256"),
        (doc({"a.safetensors": entry(size=True)}), "size"),  # type: ignore[arg-type]
        (doc({"a.safetensors": entry()}, {"t": "b.safetensors"}), "does not list"),
        (
            doc({"a.safetensors": entry(), "b.safetensors": entry()}, {"t": "a.safetensors"}),
            "holds no tensor",
        ),
        (doc({"a.safetensors": entry(), "./a.safetensors": entry()}), "plain names"),
        ({**doc({"a.safetensors": entry()}), "extra": 1}, "nothing else"),
        ({"weight_map": {"t": "a.safetensors"}}, "pins no shard"),
        (doc({f"s{i}.safetensors": entry() for i in range(MAX_SHARDS + 1)}), "1 to"),
    ],
)
def test_malformed_manifests_are_refused(tmp_path: Path, d: dict[str, Any], reason: str) -> None:
    assert reason in refused(tmp_path, d)


def test_duplicate_keys_nan_and_huge_manifests_are_refused(tmp_path: Path) -> None:
    dup = b'{"weight_map": {"t": "a.safetensors"}, "shards": {"a.safetensors": ' + (
        b'{"sha256": "' + SHA.encode() + b'", "size": 9}, "a.safetensors": {}}}'
    )
    assert "appears twice" in refused(tmp_path, dup)
    assert "not JSON" in refused(tmp_path, b'{"weight_map": NaN}')
    assert "over" in refused(tmp_path, b"{" + b" " * (8 << 20) + b"}")


def test_shards_that_sum_over_the_limit_are_refused_before_any_fetch(tmp_path: Path) -> None:
    d = doc({"a.safetensors": entry(600), "b.safetensors": entry(600)})
    assert "size limit of 1000" in refused(tmp_path, d, limit=1000)


def test_a_sharded_checkpoint_is_cached_per_shard_and_pins_each(tmp_path: Path) -> None:
    src = tmp_path / "src"
    manifest, sha = ck.save_sharded(tiny.weights(1), src, 3)
    store = CheckpointStore(tmp_path / "cache", 10**6, 10**6, file_roots=(str(src),))
    local = store.fetch_checkpoint(Checkpoint(uri=f"file://{manifest}", sha256=sha))
    assert local.manifest is not None and len(local.files) == 3
    cached = {p.name for p in store.cache_dir.iterdir()}
    assert cached == {sha} | {s.checkpoint.sha256 for s in local.manifest.shards}
    # a shard changed at the source after its manifest was written: refused
    shard = src / "model-00002-of-00003.safetensors"
    ck.save(tiny.weights(2), shard)
    fresh = CheckpointStore(tmp_path / "cache2", 10**6, 10**6, file_roots=(str(src),))
    with pytest.raises((IntegrityError, CheckpointTooLarge)):
        fresh.fetch_checkpoint(Checkpoint(uri=f"file://{manifest}", sha256=sha))
    assert all(not p.name.startswith(".tmp") for p in fresh.cache_dir.iterdir())


def test_a_shard_larger_than_declared_is_cut_off(tmp_path: Path) -> None:
    src = tmp_path / "src"
    manifest, _ = ck.save_sharded(tiny.weights(1), src, 2)
    d = json.loads(manifest.read_text())
    first = next(iter(d["shards"]))
    d["shards"][first]["size"] -= 1
    manifest.write_text(json.dumps(d))
    store = CheckpointStore(tmp_path / "cache", 10**6, 10**6, file_roots=(str(src),))
    with pytest.raises(CheckpointTooLarge):
        store.fetch_checkpoint(Checkpoint(uri=f"file://{manifest}", sha256=ck.sha256_of(manifest)))


def test_eviction_spares_the_shards_of_a_protected_manifest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    manifest, sha = ck.save_sharded(tiny.weights(1), src, 2)
    store = CheckpointStore(tmp_path / "cache", 100, 10**6, file_roots=(str(src),))
    store.protect({sha})
    local = store.fetch_checkpoint(Checkpoint(uri=f"file://{manifest}", sha256=sha))
    other = src / "other.safetensors"
    other_sha = ck.save(tiny.weights(3), other)
    store.fetch(Checkpoint(uri=f"file://{other}", sha256=other_sha))  # over the bound
    assert all(path.exists() for path, _ in local.files)


def swapper(tmp_path: Path) -> Swapper:
    store = CheckpointStore(tmp_path / "cache", 10**8, 10**8, file_roots=(str(tmp_path),))
    return Swapper(store, torch.device("cpu"), tiny.ALLOWED)


def sharded_revision(number: int, manifest: Path, sha: str) -> Revision:
    return Revision.model_validate(ck.revision(number, f"file://{manifest}", sha))


def answer(s: Swapper) -> tuple[int, torch.Tensor]:
    with s.lease() as model, torch.no_grad():
        return model.revision.revision, model.module(X)


def test_sharded_checkpoints_swap_like_single_files(tmp_path: Path) -> None:
    s = swapper(tmp_path)
    for number, shards in ((1, 2), (2, 3), (3, 1), (4, 3)):
        manifest, sha = ck.save_sharded(tiny.weights(number), tmp_path / f"r{number}", shards)
        s.swap_to(sharded_revision(number, manifest, sha))
        got, out = answer(s)
        assert got == number and torch.equal(out, tiny.expected(tiny.weights(number), X))
    current = s.current()
    assert s.last_kind == "standby" and current is not None and current.flat is not None


def _rewrite(manifest: Path, edit: Any) -> str:
    d = json.loads(manifest.read_text())
    edit(d)
    manifest.write_text(json.dumps(d))
    return ck.sha256_of(manifest)


def test_a_tensor_in_two_shards_or_in_no_shard_is_refused(tmp_path: Path) -> None:
    s = swapper(tmp_path)
    good, sha = ck.save_sharded(tiny.weights(1), tmp_path / "r1", 3)
    s.swap_to(sharded_revision(1, good, sha))
    folder = tmp_path / "bad"
    manifest, _ = ck.save_sharded(tiny.weights(2), folder, 3)
    # shard 3 also holds fc.weight (a tensor of shard 1): a duplicate across shards
    dup = {"fc.weight": tiny.weights(2)["fc.weight"], "scale": tiny.weights(2)["scale"]}
    third = "model-00003-of-00003.safetensors"

    def overlap(d: dict[str, Any]) -> None:
        d["shards"][third] = {
            "sha256": ck.save(dup, folder / third),
            "size": (folder / third).stat().st_size,
        }

    with pytest.raises(ManifestError, match="another shard"):
        s.swap_to(sharded_revision(2, manifest, _rewrite(manifest, overlap)))

    def drop(d: dict[str, Any]) -> None:  # the map lists a tensor no shard holds
        d["weight_map"]["extra.weight"] = third

    manifest, _ = ck.save_sharded(tiny.weights(2), tmp_path / "bad2", 3)
    with pytest.raises(ManifestError, match="no shard holds"):
        s.swap_to(sharded_revision(3, manifest, _rewrite(manifest, drop)))
    manifest, sha = ck.save_sharded({"fc.weight": tiny.weights(2)["fc.weight"]}, tmp_path / "m", 1)
    with pytest.raises(StateDictMismatch, match="missing keys"):
        s.swap_to(sharded_revision(4, manifest, sha))
    got, out = answer(s)
    assert got == 1 and torch.equal(out, tiny.expected(tiny.weights(1), X))


def test_shards_in_another_dtype_are_refused_unless_cast(tmp_path: Path) -> None:
    s = swapper(tmp_path)
    half = {k: v.half() for k, v in tiny.weights(1).items()}
    manifest, sha = ck.save_sharded(half, tmp_path / "h", 2)
    with pytest.raises(StateDictMismatch, match="castWeights"):
        s.swap_to(sharded_revision(1, manifest, sha))


def test_a_shard_that_is_not_safetensors_inside_is_refused(tmp_path: Path) -> None:
    s = swapper(tmp_path)
    manifest, _ = ck.save_sharded(tiny.weights(1), tmp_path / "r", 2)
    first = tmp_path / "r" / "model-00001-of-00002.safetensors"
    first.write_bytes(b"\xff" * 64)

    def fix(d: dict[str, Any]) -> None:
        d["shards"][first.name] = {"sha256": ck.sha256_of(first), "size": 64}

    with pytest.raises(FormatError, match="not a valid safetensors"):
        s.swap_to(sharded_revision(1, manifest, _rewrite(manifest, fix)))
