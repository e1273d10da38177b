"""fetch_stream.Sink: large chunks are written beside the hashing, and the sink still
hands the caller's buffer back only once its bytes are in the file."""

from __future__ import annotations

import errno
import hashlib
import io
import threading
import time
from pathlib import Path

import pytest

from hotswap_runtime.checkpoint.fetch import stream as fetch_stream
from hotswap_runtime.checkpoint.fetch.stream import Sink
from hotswap_runtime.errors import FetchError

BIG = fetch_stream.WRITE_BESIDE_BYTES


class SlowFile(io.BytesIO):
    """A cache file whose writes take a while, on whichever thread calls them."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()

    def write(self, data) -> int:  # type: ignore[no-untyped-def, override]
        self.threads.add(threading.current_thread().name)
        time.sleep(0.05)
        return super().write(bytes(data))


class FullDisk(io.BytesIO):
    def write(self, data) -> int:  # type: ignore[no-untyped-def, override]
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_reused_buffer_is_written_as_it_was_when_added() -> None:
    file = SlowFile()
    tapped: list[bytes] = []
    sink = Sink(file, "file:///m.safetensors", 10 * BIG, lambda size: tapped.append)
    sink.declare(3 * BIG)
    buffer = bytearray(BIG)
    expected = hashlib.sha256()
    for value in (1, 2, 3):  # one buffer, refilled before each add (as file:// reads do)
        buffer[:] = bytes([value]) * BIG
        expected.update(buffer)
        sink.add(memoryview(buffer))
    assert file.getvalue() == b"".join(bytes([v]) * BIG for v in (1, 2, 3))
    assert sink.matches(expected.hexdigest()) and sink.total == 3 * BIG
    assert len(tapped) == 3
    # the writer pool's threads (which of them depends on the tests that ran before)
    assert file.threads and all(t.startswith("hotswap-cache-write_") for t in file.threads)


def test_small_chunks_are_written_in_place() -> None:
    file = SlowFile()
    sink = Sink(file, "file:///m.safetensors", BIG)
    sink.add(b"x" * 100)
    assert file.getvalue() == b"x" * 100
    assert file.threads == {threading.current_thread().name}


@pytest.mark.parametrize("size", [100, BIG])
def test_a_full_cache_folder_is_a_fetch_error_naming_the_fix(size: int) -> None:
    sink = Sink(FullDisk(), "https://models.example/m.safetensors", 2 * BIG)
    with pytest.raises(FetchError, match=r"ENOSPC.*HOTSWAP_CACHE_DIR has room"):
        sink.add(b"x" * size)


def test_a_large_chunk_goes_through_hash_file_and_tap_a_cache_sized_slice_at_a_time() -> None:
    file = io.BytesIO()
    tapped: list[bytes] = []
    size = 5 * fetch_stream.SLICE_BYTES + 3  # a ranged part is 16 MiB
    sink = Sink(file, "https://models.example/m.safetensors", size, lambda _: tapped.append)
    sink.declare(size)
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    sink.add(memoryview(data))
    assert [len(t) for t in tapped] == [fetch_stream.SLICE_BYTES] * 5 + [3]
    assert b"".join(tapped) == data and file.getvalue() == data
    assert sink.matches(hashlib.sha256(data).hexdigest()) and sink.total == size


def test_the_cache_files_write_out_starts_every_16_mib_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each WRITEBACK_BYTES written, the disk write-out of those bytes is started (not
    waited for), so the fsync after the last byte has little left; a restarted sink
    starts again from byte 0."""
    started: list[tuple[int, int, int]] = []

    def record(fd: int, offset: int, count: int, flags: int) -> int:
        started.append((offset, count, flags))
        return 0

    monkeypatch.setattr(fetch_stream, "_SYNC_FILE_RANGE", record)
    step = fetch_stream.WRITEBACK_BYTES
    chunk = bytes(1 << 20)
    with (tmp_path / "cache").open("xb") as file:
        sink = Sink(file, "s3://bucket/m.safetensors", 1 << 40)
        for _ in range(40):
            sink.add(chunk)
        assert started == [(0, step, 2), (step, step, 2)]
        sink.restart()
        started.clear()
        for _ in range(17):
            sink.add(chunk)
        assert started == [(0, step, 2)]
    assert (tmp_path / "cache").stat().st_size == 17 << 20


def test_the_write_out_hint_is_a_real_call_on_this_system(tmp_path: Path) -> None:
    """libc's sync_file_range is found and called (Linux), and the file is intact."""
    assert fetch_stream._SYNC_FILE_RANGE is not None
    data = bytes(range(256)) * (80 << 12)  # 80 MiB
    with (tmp_path / "cache").open("xb") as file:
        sink = Sink(file, "s3://bucket/m.safetensors", 1 << 40)
        sink.add(data)
    assert (tmp_path / "cache").read_bytes() == data
    assert sink.matches(hashlib.sha256(data).hexdigest())
