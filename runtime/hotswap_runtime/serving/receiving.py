"""gRPC messages in the middle of arriving: how many at once, and for how long.

grpc-core lets a stream's message in only as far as the stream's HTTP/2 window, which
stays at its initial size (64 KiB, BDP probing off) until the application asks for the
message; then it opens the window to the whole message the 5-byte prefix announced (up
to ``HOTSWAP_MAX_REQUEST_BYTES``). So asking for a message is what commits its memory,
and ``Receiving`` decides when: a call takes one of ``slots`` before it reads its
message and keeps it until the request memory budget admitted the message (so the
bytes a slot let in are always bounded by one slot or by the budget), and the message
must be whole within ``seconds`` of the read, else the call is refused and grpc frees
its buffer. Calls wait for a slot in order (first come, first served), holding no more
than their stream's initial window each; connections and streams per connection bound
how many wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from hotswap_runtime.errors import InvalidInput, RequestTimeout


class Receiving:
    """At most ``slots`` messages arriving at once, each whole within ``seconds``."""

    def __init__(self, slots: int, seconds: float) -> None:
        self.slots = slots
        self.seconds = seconds
        self.arriving = 0  # calls holding a slot
        self._gate: asyncio.Semaphore | None = None  # made on the serving loop

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the block; wait in line while all are taken."""
        if self._gate is None:
            self._gate = asyncio.Semaphore(self.slots)
        async with self._gate:
            self.arriving += 1
            try:
                yield
            finally:
                self.arriving -= 1

    async def read(self, context: aio.ServicerContext[Any, Any]) -> bytes:
        """The call's one message, whole within ``seconds``; RequestTimeout past it,
        InvalidInput when the client ended the stream before a whole message."""
        try:
            async with asyncio.timeout(self.seconds):
                message = await context.read()
        except TimeoutError:
            raise RequestTimeout(
                f"the ModelInferRequest did not arrive whole within {self.seconds:g} s "
                "(HOTSWAP_GRPC_RECEIVE_SECONDS); send it over a faster link, or as "
                "smaller batches"
            ) from None
        if message is aio.EOF or not isinstance(message, bytes):
            raise InvalidInput(
                "the stream ended before a whole ModelInferRequest arrived (the client "
                "half-closed it inside or before the message); send the whole message"
            )
        return message
