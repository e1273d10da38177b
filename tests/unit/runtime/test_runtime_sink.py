"""fetch_stream.Sink: large chunks are written beside the hashing, and the sink still
hands the caller's buffer back only once its bytes are in the file."""

from __future__ import annotations

import errno
import hashlib
import io
import threading
import time

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
