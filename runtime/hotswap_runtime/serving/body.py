"""A REST request body, received under the request memory budget and a clock.

The body is charged to its claim (``budget.py``) chunk by chunk as it arrives, after a
fixed charge for the connection's buffers; a chunk the budget cannot grant yet waits
(the client's next bytes stay in the kernel) and that wait counts neither against the
client's time nor its rate. The body must arrive within ``seconds`` of the first read,
and after ``grace`` seconds at ``min_rate`` bytes a second or more on average: a client
that trickles is cut off (408, ``BodyTooSlow``, within one tick of the shared timer)
and the reason logged, whatever length it declared.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect

from hotswap_runtime.budget import RECEIVE_FIXED, Claim
from hotswap_runtime.errors import BodyTooSlow, InvalidInput, RequestTooLarge

log = logging.getLogger(__name__)
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


@dataclass(frozen=True)
class BodyLimits:
    """How large a body may be and how fast it must come."""

    max_bytes: int
    seconds: float = 60.0  # the whole body, from the first read
    grace: float = 5.0  # before the rate counts
    min_rate: float = 64 << 10  # bytes a second on average, after the grace

    def cutoff(self, received: int) -> float:
        """Seconds from the start after which ``received`` bytes are too few."""
        return min(self.seconds, max(self.grace, received / self.min_rate))


class QuietLog:
    """At most one warning a second; the lines dropped are counted in the next one."""

    def __init__(self, logger: logging.Logger, every: float = 1.0) -> None:
        self.logger = logger
        self.every = every
        self._next = 0.0
        self._dropped = 0

    def warning(self, text: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._dropped += 1
            return
        if self._dropped:
            text += f" ({self._dropped} more like it not logged)"
        self._next, self._dropped = now + self.every, 0
        self.logger.warning(text, *args)


CUT_OFF = QuietLog(log)


@dataclass
class _Body:
    """One body being received: when its clock started, what has come, whether it waits
    for the budget (its clock stopped) and whether it was cut off."""

    task: asyncio.Task[Any]
    start: float
    received: int = 0
    paused: bool = False
    cut: bool = False


class BodyClock:
    """Receives REST bodies under ``limits``. One timer for all of them: every ``tick``
    seconds, while any is being received, the ones past their limits are cut off (their
    task is cancelled, and the cancellation turned into BodyTooSlow), so a request pays
    two dict operations for its clock, not a timer of its own."""

    def __init__(self, limits: BodyLimits, tick: float = 0.25) -> None:
        self.limits = limits
        self.tick = tick
        self._bodies: dict[asyncio.Task[Any], _Body] = {}
        self._reaper: asyncio.Task[None] | None = None

    async def receive(
        self, receive: Receive, claim: Claim, declared: int | None, client: str
    ) -> bytearray:
        """The whole body, charged to ``claim`` as it arrives; BodyTooSlow past the
        limits."""
        await claim.take(RECEIVE_FIXED)
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        body = _Body(task, loop.time())
        self._bodies[task] = body
        if self._reaper is None:
            self._reaper = loop.create_task(self._reap())
        try:
            return await self._read(receive, claim, declared, body)
        except asyncio.CancelledError:
            if not body.cut or task.uncancel() > 0:
                raise
            raise self._too_slow(body, declared, loop.time(), client) from None
        finally:
            del self._bodies[task]

    async def _read(
        self, receive: Receive, claim: Claim, declared: int | None, clock: _Body
    ) -> bytearray:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            if chunk:
                _check_length(len(body) + len(chunk), declared, self.limits.max_bytes)
                if not claim.take_now(len(chunk)):
                    await self._wait(claim, len(chunk), clock)
                body += chunk
                clock.received = len(body)
            if not message.get("more_body", False):
                break
        if declared is not None and len(body) != declared:
            raise InvalidInput("the request body is shorter than its Content-Length")
        return body

    async def _wait(self, claim: Claim, nbytes: int, clock: _Body) -> None:
        """Wait for the budget with the body's clock stopped."""
        loop = asyncio.get_running_loop()
        paused, clock.paused = loop.time(), True
        try:
            await claim.take(nbytes)
        finally:
            clock.paused = False
            clock.start += loop.time() - paused

    async def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._bodies:
                await asyncio.sleep(self.tick)
                now = loop.time()
                for body in list(self._bodies.values()):
                    late = now - body.start >= self.limits.cutoff(body.received)
                    if late and not body.paused and not body.cut:
                        body.cut = True
                        body.task.cancel()
        finally:
            self._reaper = None

    def _too_slow(self, body: _Body, declared: int | None, now: float, client: str) -> BodyTooSlow:
        limits, elapsed = self.limits, now - body.start
        of = "" if declared is None else f" of {declared}"
        if elapsed >= limits.seconds:
            why = f"the body must arrive within {limits.seconds:g}s (HOTSWAP_BODY_SECONDS)"
        else:
            why = (
                f"after {limits.grace:g}s a body must arrive at {limits.min_rate:g} bytes/s "
                "or more (HOTSWAP_BODY_GRACE_SECONDS, HOTSWAP_BODY_MIN_RATE)"
            )
        reason = f"request body too slow: {body.received}{of} bytes in {elapsed:.1f}s; {why}"
        CUT_OFF.warning("cut off a request from %s: %s", client, reason)
        return BodyTooSlow(reason)


def _check_length(size: int, declared: int | None, limit: int) -> None:
    if declared is not None and size > declared:
        raise InvalidInput("the request body is longer than its Content-Length")
    if size > limit:
        raise RequestTooLarge(
            f"the request body is over this runtime's limit of {limit} bytes "
            "(HOTSWAP_MAX_REQUEST_BYTES)"
        )
