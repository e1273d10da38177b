"""devcluster/capped_store.py: one bandwidth cap for every connection, bytes counted,
ranges, nothing outside its folder; the random sharded checkpoint's manifest."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import httpx

from devcluster.capped_store import CHUNK_BYTES, CappedStore, TokenBucket, random_checkpoint
from hotswap_contract.wire import Checkpoint
from hotswap_runtime.checkpoint.manifest import read_manifest

MIB = 1 << 20


def test_the_cap_is_shared_by_every_connection(tmp_path: Path) -> None:
    """Four readers at once of 1 MiB each at 8 MiB/s: together they cannot finish before
    the bucket let 4 MiB through (a lower bound: never flaky), and every byte is counted."""
    data = bytes(range(256)) * (MIB // 256)
    (tmp_path / "f.safetensors").write_bytes(data)
    got: list[bytes] = []
    with CappedStore(tmp_path, mib_s=8) as store:

        def read() -> None:
            got.append(httpx.get(f"{store.url}/f.safetensors", timeout=30).content)

        threads = [threading.Thread(target=read) for _ in range(4)]
        began = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - began
        assert got == [data] * 4
        assert store.sent == 4 * MIB
        assert store.gets == 4
    assert elapsed >= (4 * MIB - CHUNK_BYTES) / (8 * MIB)


def test_a_range_is_served_and_only_its_bytes_are_counted(tmp_path: Path) -> None:
    data = bytes(range(256)) * 64
    (tmp_path / "f.safetensors").write_bytes(data)
    with CappedStore(tmp_path, mib_s=100) as store:
        answer = httpx.get(f"{store.url}/f.safetensors", headers={"Range": "bytes=100-1123"})
        assert answer.status_code == 206
        assert answer.content == data[100:1124]
        assert store.sent == 1024


def test_nothing_outside_its_folder(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    (tmp_path / "secret").write_text("x")
    with CappedStore(root, mib_s=100) as store:
        assert httpx.get(f"{store.url}/../secret").status_code == 404
        assert httpx.get(f"{store.url}/%2e%2e/secret").status_code == 404
        assert httpx.get(f"{store.url}/missing").status_code == 404
        assert store.sent == 0


def test_the_bucket_keeps_the_rate_across_threads() -> None:
    bucket = TokenBucket(4 * MIB)
    began = time.perf_counter()
    threads = [
        threading.Thread(target=lambda: [bucket.take(CHUNK_BYTES) for _ in range(4)])
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.perf_counter() - began >= (8 - 1) * CHUNK_BYTES / (4 * MIB)


def test_random_checkpoint_pins_every_shard(tmp_path: Path) -> None:
    manifest, sha = random_checkpoint(tmp_path, 3 * MIB + 5, shards=4)
    assert hashlib.sha256(manifest.read_bytes()).hexdigest() == sha
    doc = json.loads(manifest.read_text())
    assert sorted(doc["weight_map"].values()) == sorted(doc["shards"])
    sizes = 0
    for name, entry in doc["shards"].items():
        blob = (tmp_path / name).read_bytes()
        assert name.endswith(".safetensors")
        assert hashlib.sha256(blob).hexdigest() == entry["sha256"]
        assert len(blob) == entry["size"]
        sizes += len(blob)
    assert sizes == 3 * MIB + 5
    ref = Checkpoint(uri=f"http://127.0.0.1:1/c/{manifest.name}", sha256=sha)
    assert len(read_manifest(manifest, ref, 4 * MIB).shards) == 4  # what the runtime accepts
