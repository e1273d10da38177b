"""A REST request body, received under the request memory budget and a clock.

The body is charged to its claim (``budget.py``) chunk by chunk as it arrives, after a
fixed charge for the connection's buffers; a chunk the budget cannot grant yet waits
(the client's next bytes stay in the kernel) and that wait counts neither against the
client's time nor its rate. The body must arrive within ``seconds`` of the first read,
and after ``grace`` seconds at ``min_rate`` bytes a second or more on average: a client
that trickles is cut off (408, ``BodyTooSlow``) and the reason logged, whatever length
it declared.
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


async def receive_body(
    receive: Receive, claim: Claim, declared: int | None, limits: BodyLimits, client: str
) -> bytearray:
    """The whole body, charged to ``claim`` as it arrives; BodyTooSlow past the limits."""
    await claim.take(RECEIVE_FIXED)
    loop = asyncio.get_running_loop()
    body = bytearray()
    start = loop.time()
    try:
        async with asyncio.timeout_at(start + limits.cutoff(0)) as clock:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect()
                chunk = message.get("body", b"")
                if chunk:
                    _check_length(len(body) + len(chunk), declared, limits.max_bytes)
                    if not claim.take_now(len(chunk)):
                        clock.reschedule(None)
                        paused = loop.time()
                        await claim.take(len(chunk))
                        start += loop.time() - paused
                    body += chunk
                if not message.get("more_body", False):
                    break
                clock.reschedule(start + limits.cutoff(len(body)))
    except TimeoutError:
        raise _too_slow(len(body), declared, loop.time() - start, limits, client) from None
    if declared is not None and len(body) != declared:
        raise InvalidInput("the request body is shorter than its Content-Length")
    return body


def _check_length(size: int, declared: int | None, limit: int) -> None:
    if declared is not None and size > declared:
        raise InvalidInput("the request body is longer than its Content-Length")
    if size > limit:
        raise RequestTooLarge(
            f"the request body is over this runtime's limit of {limit} bytes "
            "(HOTSWAP_MAX_REQUEST_BYTES)"
        )


def _too_slow(
    received: int, declared: int | None, elapsed: float, limits: BodyLimits, client: str
) -> BodyTooSlow:
    of = "" if declared is None else f" of {declared}"
    if elapsed >= limits.seconds:
        why = f"the body must arrive within {limits.seconds:g}s (HOTSWAP_BODY_SECONDS)"
    else:
        why = (
            f"after {limits.grace:g}s a body must arrive at {limits.min_rate:g} bytes/s or "
            "more (HOTSWAP_BODY_GRACE_SECONDS, HOTSWAP_BODY_MIN_RATE)"
        )
    reason = f"request body too slow: {received}{of} bytes in {elapsed:.1f}s; {why}"
    CUT_OFF.warning("cut off a request from %s: %s", client, reason)
    return BodyTooSlow(reason)
