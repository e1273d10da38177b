"""A download's bytes: what a fetcher yields, and the sink that checks, hashes and keeps them.

Every fetcher hands the store a ``Body``: the size the source declared (or None) and the
chunks as they arrive. ``pump`` moves them into a ``Sink``, waiting at most the idle bound
for each chunk and never bounding the whole file, so a slow but steady download finishes
and a stalled one fails. The sink checks the size limit before anything is read and
again as bytes arrive, hashes while writing, and knows nothing of where the bytes came
from.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import BinaryIO

from .errors import CheckpointTooLarge, FetchError
from .fetch_net import NetPolicy, stalled


@dataclass
class Body:
    """A source opened for reading: its declared size and its chunks."""

    size: int | None
    chunks: AsyncGenerator[bytes, None]


class Sink:
    """The temporary cache file a download streams into, with its size and sha256."""

    def __init__(self, file: BinaryIO, shown: str, limit: int) -> None:
        self.file = file
        self.shown = shown
        self.limit = limit
        self.total = 0
        self.digest = hashlib.sha256()

    def declare(self, size: int | None) -> None:
        """Refuse a source whose declared size is over the limit, before reading it."""
        if size is not None and size > self.limit:
            raise self._too_large()

    def add(self, chunk: bytes | memoryview) -> None:
        self.total += len(chunk)
        if self.total > self.limit:
            raise self._too_large()
        self.digest.update(chunk)
        try:
            self.file.write(chunk)
        except OSError as exc:
            raise FetchError(
                f"cannot write checkpoint {self.shown} into the cache folder "
                f"({errno.errorcode.get(exc.errno or 0, type(exc).__name__)}); check that "
                "HOTSWAP_CACHE_DIR has room for it"
            ) from None

    def matches(self, sha256: str) -> bool:
        return self.digest.hexdigest() == sha256

    def _too_large(self) -> CheckpointTooLarge:
        return CheckpointTooLarge(
            f"checkpoint {self.shown} is over the size limit of {self.limit} bytes; "
            "raise HOTSWAP_MAX_CHECKPOINT_BYTES if it is right"
        )


async def pump(opened: AbstractAsyncContextManager[Body], sink: Sink, policy: NetPolicy) -> None:
    """Stream a fetcher's body into ``sink``: at most the idle bound per chunk."""
    async with opened as body:
        sink.declare(body.size)
        async with contextlib.aclosing(body.chunks) as chunks:
            while True:
                try:
                    async with asyncio.timeout(policy.idle_seconds):
                        chunk = await anext(chunks, None)
                except TimeoutError:
                    raise stalled(sink.shown, policy) from None
                if chunk is None:
                    return
                sink.add(chunk)
