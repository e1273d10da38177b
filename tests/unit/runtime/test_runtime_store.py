"""Checkpoint store: verify while streaming, atomic cache by sha256, LRU with a bound."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hotswap_runtime.contract import Checkpoint
from hotswap_runtime.errors import CheckpointNotFound, CheckpointTooLarge, IntegrityError
from hotswap_runtime.store import CheckpointStore


def blob(tmp_path: Path, name: str, size: int) -> Checkpoint:
    data = os.urandom(size)
    path = tmp_path / "src" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return Checkpoint(uri=f"file://{path}", sha256=hashlib.sha256(data).hexdigest())


def store(tmp_path: Path, bound: int = 10_000, limit: int = 5_000) -> CheckpointStore:
    return CheckpointStore(tmp_path / "cache", bound, limit)


def test_fetch_verifies_and_caches_by_sha(tmp_path: Path) -> None:
    s = store(tmp_path)
    ck = blob(tmp_path, "a.pt", 1000)
    path = s.fetch(ck)
    assert path.name == ck.sha256 and hashlib.sha256(path.read_bytes()).hexdigest() == ck.sha256
    Path(ck.uri.removeprefix("file://")).unlink()
    assert s.fetch(ck) == path, "a cached sha256 needs no source"


def test_mismatch_leaves_nothing_behind(tmp_path: Path) -> None:
    s = store(tmp_path)
    ck = blob(tmp_path, "a.pt", 1000)
    wrong = Checkpoint(uri=ck.uri, sha256="f" * 64)
    with pytest.raises(IntegrityError, match=r"expected f{64}"):
        s.fetch(wrong)
    assert list((tmp_path / "cache").iterdir()) == []


def test_size_limit_and_missing_file(tmp_path: Path) -> None:
    s = store(tmp_path, limit=500)
    with pytest.raises(CheckpointTooLarge, match="size limit of 500 bytes"):
        s.fetch(blob(tmp_path, "big.pt", 501))
    with pytest.raises(CheckpointNotFound, match="does not exist"):
        s.fetch(Checkpoint(uri=f"file://{tmp_path}/nope.pt", sha256="a" * 64))
    assert list((tmp_path / "cache").iterdir()) == []


def test_lru_eviction_spares_protected(tmp_path: Path) -> None:
    s = store(tmp_path, bound=2500)
    a, b, c = (blob(tmp_path, f"{n}.pt", 1000) for n in "abc")
    s.fetch(a)
    s.fetch(b)
    s.protect({a.sha256})
    s.fetch(c)  # over the bound: b is the oldest unprotected file
    cached = {p.name for p in (tmp_path / "cache").iterdir()}
    assert cached == {a.sha256, c.sha256}


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ".tmp-abc-123").write_bytes(b"partial")
    store(tmp_path)
    assert not (cache / ".tmp-abc-123").exists()


def test_chunks_through_one_buffer_keep_every_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hotswap_runtime import store as store_module

    monkeypatch.setattr(store_module, "CHUNK", 1000)  # 4 full chunks and a partial one
    ck = blob(tmp_path, "multi.pt", 4500)
    path = store(tmp_path).fetch(ck)
    assert path.read_bytes() == Path(ck.uri.removeprefix("file://")).read_bytes()


def test_read_into_falls_back_to_read(tmp_path: Path) -> None:
    import io

    from hotswap_runtime.store import _read_into

    class ReadOnly:  # a stream with read() only
        def __init__(self, data: bytes) -> None:
            self.inner = io.BytesIO(data)

        def read(self, n: int) -> bytes:
            return self.inner.read(n)

    view = memoryview(bytearray(4))
    source = ReadOnly(b"abcdef")
    assert _read_into(source, view) == 4 and bytes(view) == b"abcd"  # type: ignore[arg-type]
    assert _read_into(source, view) == 2 and bytes(view[:2]) == b"ef"  # type: ignore[arg-type]
    assert _read_into(source, view) == 0  # type: ignore[arg-type]
