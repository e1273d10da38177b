"""A download's bytes: what a fetcher yields, and the sink that checks, hashes and keeps them.

Every fetcher hands the store a ``Body``: the size the source declared (or None), the
chunks as they arrive, and, when the source serves byte ranges (HTTP ``Accept-Ranges:
bytes``, S3), a way to open one. ``pump`` moves the bytes into a ``Sink``, waiting at
most the idle bound for each chunk and never bounding the whole file, so a slow but
steady download finishes and a stalled one fails.

A source with ranges and more than one ``PART_BYTES`` is read in parts: the first from
the response already open (closed once that part is read, so the server stops sending
the rest), the next ones with ranged requests, at most ``PARALLEL``
parts in flight, handed to the sink in order. So the bytes one download holds besides
the sink's file are at most ``PARALLEL * PART_BYTES`` (64 MiB); the store downloads at
most ``FILES_IN_FLIGHT`` shards at once, so a swap holds at most ``WINDOW_BYTES``
(128 MiB) besides the files and the staging buffer. A connection that breaks off
mid-part (``Dropped``) is resumed with a range request from the first byte not yet
received, at most ``MAX_RESUMES`` times per download; the sha256 of the whole file,
checked after the last byte, is what vouches for the pieces.

The sink checks the size limit before anything is read and again as bytes arrive,
hashes while a writer thread writes the cache file (large chunks), passes each chunk
to a ``tap`` (the streaming parser) when there is one, and knows nothing of where the
bytes came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import logging
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import BinaryIO

from hotswap_runtime.checkpoint.fetch.net import NetPolicy, stalled
from hotswap_runtime.errors import CheckpointTooLarge, Dropped, FetchError

log = logging.getLogger(__name__)


PART_BYTES = 16 << 20
PARALLEL = 4
FILES_IN_FLIGHT = 2  # shards a store downloads at once (store.CheckpointStore)
WINDOW_BYTES = PART_BYTES * PARALLEL * FILES_IN_FLIGHT
MAX_RESUMES = 5
WRITE_BESIDE_BYTES = 1 << 20  # chunks from this size are written beside the hashing
# A chunk is hashed, written and parsed a slice at a time: a slice stays in the core's
# L2 cache (1 MiB on the test machine's EPYC) from the first pass to the last, where a
# 16 MiB part went through memory three times, evicting what the serving threads had
# cached (bench/swap.py: p99 during swaps over steady, 1.40 with 8 MiB, 1.16-1.20 with 1 MiB).
SLICE_BYTES = 1 << 20
# Each time this much more of a cache file is written, its disk write-out is started
# (Linux's sync_file_range, not waited for), so the fsync after the last byte has little
# left: it had taken 0.05-0.21 s per shard, the last one on the swap's critical path.
WRITEBACK_BYTES = 16 << 20
# One thread per file in flight writes cache files beside the loader.
_WRITER = ThreadPoolExecutor(FILES_IN_FLIGHT, thread_name_prefix="hotswap-cache-write")

OpenRange = Callable[[int, int], AbstractAsyncContextManager["Body"]]
# A fetcher's chunk: bytes of its own, or a view of a buffer it reuses once the next
# chunk is asked for (the sink is done with a chunk when ``Sink.add`` returns).
Chunk = bytes | memoryview


@dataclass
class Body:
    """A source opened for reading: its declared size, its chunks, ``ranges``: open
    bytes ``[start, end)`` of the same object (None: the source has no ranges), and
    whether its client bounds each read by the idle bound itself."""

    size: int | None
    chunks: AsyncGenerator[Chunk, None]
    ranges: OpenRange | None = None
    idle_bounded: bool = False  # each read of ``chunks`` already fails after the idle bound


Tap = Callable[[memoryview], None]
TapFor = Callable[[int | None], Tap | None]  # the declared size -> a tap, or None


class Sink:
    """The temporary cache file a download streams into, with its size and sha256, and
    the tap each chunk is handed to next (the streaming parser), if any."""

    def __init__(
        self, file: BinaryIO, shown: str, limit: int, tap_for: TapFor | None = None
    ) -> None:
        self.file = file
        self.shown = shown
        self.limit = limit
        self.total = 0
        self.digest = hashlib.sha256()
        self.tap_for = tap_for
        self.tap: Tap | None = None
        self._written = 0
        self._flushed = 0  # the bytes whose write-out has been started

    def restart(self) -> None:
        """Empty the file to take the bytes from another source (a peer failed, or the
        store after peers). The tap is asked for again: a streaming parser that saw the
        file's index before turns itself off, and the file is parsed once verified."""
        self.file.seek(0)
        self.file.truncate()
        self.total = 0
        self.digest = hashlib.sha256()
        self.tap = None
        self._written = self._flushed = 0

    def declare(self, size: int | None) -> None:
        """Refuse a source whose declared size is over the limit, before reading it."""
        if size is not None and size > self.limit:
            raise self._too_large()
        if self.tap_for is not None:
            self.tap = self.tap_for(size)

    def add(self, chunk: Chunk) -> None:
        """Count, hash, keep and tap ``chunk``, SLICE_BYTES at a time. A large slice is
        written to the cache file on the writer thread while this one hashes and taps it
        (the write is the costliest step: page-cache allocation and copy); it returns
        once both are done, so the caller may reuse the chunk's buffer."""
        self.total += len(chunk)
        if self.total > self.limit:
            raise self._too_large()
        view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
        for start in range(0, len(view), SLICE_BYTES):
            self._add_slice(view[start : start + SLICE_BYTES])

    def _add_slice(self, view: memoryview) -> None:
        if len(view) < WRITE_BESIDE_BYTES:
            self.digest.update(view)
            self._write(view)
            self._tap(view)
            return
        written = _WRITER.submit(self._write, view)
        try:
            self.digest.update(view)
            self._tap(view)
        finally:
            failed = written.exception()  # waits: the buffer is the caller's again after
        if failed is not None:
            raise failed

    def _tap(self, view: memoryview) -> None:
        if self.tap is not None:
            self.tap(view)

    def _write(self, view: memoryview) -> None:
        try:
            self.file.write(view)
            self._written += len(view)
            if self._written - self._flushed >= WRITEBACK_BYTES:
                _start_writeback(self.file, self._flushed, self._written)
                self._flushed = self._written
        except OSError as exc:
            raise FetchError(
                f"cannot write checkpoint {self.shown} into the cache folder "
                f"({errno.errorcode.get(exc.errno or 0, type(exc).__name__)}); check that "
                "HOTSWAP_CACHE_DIR has room for it"
            ) from None

    def matches(self, sha256: str) -> bool:
        return self.digest.hexdigest() == sha256

    def _too_large(self) -> CheckpointTooLarge:
        return too_large(self.shown, self.limit)


def _start_writeback(file: BinaryIO, start: int, end: int) -> None:
    """Start writing bytes ``[start, end)`` of ``file`` to disk without waiting: a hint
    (Linux only); the fsync at the end is what waits."""
    if _SYNC_FILE_RANGE is None:
        return
    try:
        fd = file.fileno()
    except (OSError, ValueError):  # not a file of the system's
        return
    _SYNC_FILE_RANGE(fd, start, end - start, _SYNC_FILE_RANGE_WRITE)


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range(2), which the os module does not offer; None elsewhere."""
    try:
        call = ctypes.CDLL(None).sync_file_range
    except (AttributeError, OSError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    return call


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start write-out of dirty pages, do not wait


def too_large(shown: str, limit: int) -> CheckpointTooLarge:
    """The refusal of checkpoint ``shown`` over ``limit`` bytes, downloaded or cached."""
    return CheckpointTooLarge(
        f"checkpoint {shown} is over the size limit of {limit} bytes; "
        "raise HOTSWAP_MAX_CHECKPOINT_BYTES if it is right"
    )


async def pump(opened: AbstractAsyncContextManager[Body], sink: Sink, policy: NetPolicy) -> None:
    """Stream a fetcher's body into ``sink``: at most the idle bound per chunk; in
    parallel ranged parts, resumed where a connection broke off, when the source can."""
    async with opened as body:
        sink.declare(body.size)
        if body.ranges is None or body.size is None:
            async with contextlib.aclosing(body.chunks):
                while (chunk := await _next(body, sink.shown, policy)) is not None:
                    sink.add(chunk)
            return
        await _parts(body, body.size, body.ranges, sink, policy)


async def _next(body: Body, shown: str, policy: NetPolicy) -> Chunk | None:
    """The body's next chunk, None at its end; a stall of the idle bound fails. A body
    whose client bounds each read by it (``idle_bounded``) is read without a timer of
    its own: one per chunk cost the fetch loop a tenth of its time."""
    if body.idle_bounded:
        return await anext(body.chunks, None)
    try:
        async with asyncio.timeout(policy.idle_seconds):
            return await anext(body.chunks, None)
    except TimeoutError:
        raise stalled(shown, policy) from None


class _Resumes:
    """The resumes left to one download."""

    def __init__(self) -> None:
        self.left = MAX_RESUMES


async def _parts(body: Body, size: int, ranges: OpenRange, sink: Sink, policy: NetPolicy) -> None:
    """``size`` bytes in parts of PART_BYTES, PARALLEL in flight, into ``sink`` in order.
    The PARALLEL part buffers are reused from part to part: a fresh 16 MiB buffer for
    each part cost the fetch loop its page faults and zeroing."""
    bounds = [(start, min(start + PART_BYTES, size)) for start in range(0, size, PART_BYTES)]
    resumes = _Resumes()
    pending: list[tuple[asyncio.Task[None], bytearray, memoryview]] = []
    spare: list[bytearray] = []
    started = 0
    try:
        for _ in bounds:
            while len(pending) < PARALLEL and started < len(bounds):
                start, end = bounds[started]
                buffer = spare.pop() if spare else bytearray(min(PART_BYTES, size))
                view = memoryview(buffer)[: end - start]
                first = body if started == 0 else None  # the response already open
                part = _part(start, view, ranges, first, sink.shown, policy, resumes)
                pending.append((asyncio.create_task(part), buffer, view))
                started += 1
            task, buffer, view = pending.pop(0)
            await task
            await asyncio.to_thread(sink.add, view)  # hashing off the loop
            spare.append(buffer)  # the sink is done with it
    finally:
        for task, _, _ in pending:
            task.cancel()
        await asyncio.gather(*(task for task, _, _ in pending), return_exceptions=True)
        await body.chunks.aclose()


async def _part(
    start: int,
    buffer: memoryview,
    ranges: OpenRange,
    first: Body | None,
    shown: str,
    policy: NetPolicy,
    resumes: _Resumes,
) -> None:
    """Fill ``buffer`` with the bytes from ``start``: from ``first`` (the open response,
    read up to the part's end) or a ranged request, resumed from where a broken
    connection left off."""
    part = _Filling(buffer)
    end = start + len(buffer)
    while not part.full:
        try:
            if first is not None:
                opened, first = first, None
                try:
                    await part.fill(opened, shown, policy)
                finally:
                    await opened.chunks.aclose()  # the rest of the body: the next parts' ranges
            else:
                async with (
                    ranges(start + part.got, end) as opened,
                    contextlib.aclosing(opened.chunks),
                ):
                    await part.fill(opened, shown, policy)
            if not part.full:
                raise Dropped(f"cannot fetch checkpoint {shown}: the body ended early")
        except Dropped:
            if resumes.left <= 0:
                raise
            resumes.left -= 1
            log.info(
                "fetch of %s: connection dropped at byte %d; resuming", shown, start + part.got
            )


@dataclass
class _Filling:
    """A part's buffer and how much of it has arrived."""

    buffer: memoryview
    got: int = 0

    @property
    def full(self) -> bool:
        return self.got == len(self.buffer)

    async def fill(self, body: Body, shown: str, policy: NetPolicy) -> None:
        """Read ``body`` into the buffer until it is full or it ends (or breaks off)."""
        while not self.full:
            chunk = await _next(body, shown, policy)
            if chunk is None:
                return
            take = min(len(chunk), len(self.buffer) - self.got)
            self.buffer[self.got : self.got + take] = chunk[:take]
            self.got += take
