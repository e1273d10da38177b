"""The memory that requests being received and decoded may hold at once.

A request is charged before its body is read: the body itself plus what decoding it
allocates (the tensor, and for JSON a bounded window of parsed numbers). The charge is
known from the request's headers alone, taken in one piece, and held until the answer
is sent, so waiting requests hold nothing and no two requests can wait on each other.
Requests are admitted first come, first served: a large one is not starved by a stream
of small ones. A charge larger than the whole budget can never be admitted and is
refused at once (413).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

from hotswap_runtime.errors import RequestTooLarge

# Python objects of one JSON chunk being parsed (jsonscan.CHUNK bytes; ~32 B a number).
JSON_WINDOW = 24 << 20


def decode_cost(body_bytes: int, json_bytes: int | None) -> int:
    """Bytes a REST body of ``body_bytes`` may hold while received and decoded: the body,
    the tensor decoded from it (at most one float32 per two bytes of JSON, or the binary
    part's size; ``json_bytes`` is the Inference-Header-Content-Length, None for plain
    JSON) and one chunk of parsed JSON numbers."""
    tensor = 2 * body_bytes if json_bytes is None else body_bytes
    return body_bytes + tensor + JSON_WINDOW


class MemoryBudget:
    """A byte-weighted FIFO semaphore on one event loop."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("a memory budget needs a positive capacity")
        self.capacity = capacity
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @contextlib.asynccontextmanager
    async def hold(self, nbytes: int, what: str = "request") -> AsyncIterator[None]:
        """Hold ``nbytes`` of the budget for the block; wait in line while it is spent."""
        await self.acquire(nbytes, what)
        try:
            yield
        finally:
            self.release(nbytes)

    async def acquire(self, nbytes: int, what: str = "request") -> None:
        if nbytes > self.capacity:
            raise RequestTooLarge(
                f"{what} needs {nbytes} bytes to receive and decode, over this runtime's "
                f"request memory of {self.capacity} bytes (HOTSWAP_REQUEST_MEMORY_BYTES); "
                "send a smaller batch, or binary tensor data instead of JSON"
            )
        if not self._waiters and self.used + nbytes <= self.capacity:
            self.used += nbytes
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (nbytes, future)
        self._waiters.append(entry)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(nbytes)  # admitted just as the waiter was cancelled
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._wake()
            raise

    def release(self, nbytes: int) -> None:
        self.used -= nbytes
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            nbytes, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if self.used + nbytes > self.capacity:
                return
            self._waiters.popleft()
            self.used += nbytes
            future.set_result(None)
