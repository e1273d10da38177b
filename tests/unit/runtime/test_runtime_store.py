"""Checkpoint store: verify while streaming, atomic cache by sha256, LRU with a bound."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from hotswap_contract.wire import Checkpoint
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.errors import (
    CheckpointNotFound,
    CheckpointTooLarge,
    FetchRefused,
    IntegrityError,
    Superseded,
)


def blob(tmp_path: Path, name: str, size: int) -> Checkpoint:
    data = os.urandom(size)
    path = tmp_path / "src" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return Checkpoint(uri=f"file://{path}", sha256=hashlib.sha256(data).hexdigest())


def store(tmp_path: Path, bound: int = 10_000, limit: int = 5_000) -> CheckpointStore:
    return CheckpointStore(tmp_path / "cache", bound, limit, file_roots=(str(tmp_path / "src"),))


def test_fetch_verifies_and_caches_by_sha(tmp_path: Path) -> None:
    s = store(tmp_path)
    ck = blob(tmp_path, "a.pt", 1000)
    path = s.fetch(ck)
    assert path.name == ck.sha256 and hashlib.sha256(path.read_bytes()).hexdigest() == ck.sha256
    Path(ck.uri.removeprefix("file://")).unlink()
    assert s.fetch(ck) == path, "a cached sha256 needs no source"


def test_mismatch_leaves_nothing_behind_and_reveals_neither_hash_nor_size(
    tmp_path: Path,
) -> None:
    s = store(tmp_path)
    ck = blob(tmp_path, "a.pt", 1234)
    wrong = Checkpoint(uri=ck.uri, sha256="f" * 64)
    with pytest.raises(
        IntegrityError, match=r"content does not match spec\.checkpoint\.sha256"
    ) as e:
        s.fetch(wrong)
    reason = str(e.value)
    assert ck.sha256 not in reason and ck.sha256[:12] not in reason and "1234" not in reason
    assert list((tmp_path / "cache").iterdir()) == []


def test_size_limit_and_missing_file(tmp_path: Path) -> None:
    s = store(tmp_path, limit=500)
    with pytest.raises(CheckpointTooLarge, match="size limit of 500 bytes") as e:
        s.fetch(blob(tmp_path, "big.pt", 501))
    assert "501" not in str(e.value)
    with pytest.raises(CheckpointNotFound, match="does not exist"):
        s.fetch(Checkpoint(uri=f"file://{tmp_path}/src/nope.pt", sha256="a" * 64))
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
    from hotswap_runtime.checkpoint.fetch import file as fetch_file

    monkeypatch.setattr(fetch_file, "CHUNK", 1000)  # 4 full chunks and a partial one
    ck = blob(tmp_path, "multi.pt", 4500)
    path = store(tmp_path).fetch(ck)
    assert path.read_bytes() == Path(ck.uri.removeprefix("file://")).read_bytes()


def test_a_newer_revision_stops_a_file_read(tmp_path: Path) -> None:
    s = store(tmp_path)
    with pytest.raises(Superseded, match="a newer revision is wanted"):
        s.fetch(blob(tmp_path, "a.pt", 1000), lambda: True)
    assert list((tmp_path / "cache").iterdir()) == []


def test_unknown_scheme_is_refused(tmp_path: Path) -> None:
    ck = Checkpoint.model_construct(uri="ftp://host/x.pt", sha256="a" * 64, secret_ref=None)
    with pytest.raises(FetchRefused, match="only file, http, https, s3, oci, hf, gs and az"):
        store(tmp_path).fetch(ck)
