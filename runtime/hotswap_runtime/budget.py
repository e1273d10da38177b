"""The memory that requests being received and decoded may hold at once.

Every request takes a *claim* from its headers: the most it will ever hold, its body
plus what decoding it allocates (the tensor, and for JSON a bounded window of parsed
numbers; ``decode_cost``). It is charged as that memory is really held: a REST body as
its bytes arrive (after a small fixed charge for the connection's buffers), the rest
when decoding starts; a gRPC message, which grpc has read already, all at once. So a
client that declares a large body and trickles it holds only what it sent, and fifty
that trickle small bodies hold fifty fixed charges. The charge is held until the answer
is built.

No two requests wait on each other: claims are kept in arrival order, and a charge is
granted only if every older claim could still take the rest of its claim once the
claims before it are done (the banker's rule, in arrival order). The oldest claim can
always take what it needs, so some request always moves, and a large request is not
starved by the small ones that came after it: they only get the room it leaves. A
request waits for the budget at most ``wait`` seconds in all, then it is refused
(``Overloaded``: 503, RESOURCE_EXHAUSTED); a claim larger than the whole budget can
never be granted and is refused at once (413).

The budget is *exhausted* once it has refused requests for ``unready_after`` seconds
with none getting through in between, and while a small request still could not be
admitted: readiness turns false then, and true again as soon as one gets through or a
small one would fit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from types import TracebackType

from hotswap_runtime.errors import Overloaded, RequestTooLarge

# Python objects of one JSON chunk being parsed (jsonscan.CHUNK bytes; ~32 B a number).
JSON_WINDOW = 24 << 20
# What a REST request holds before its body is charged: headers, the bytes uvicorn
# buffers for it (64 KiB before it stops reading) and the chunk in hand.
RECEIVE_FIXED = 256 << 10
# The claim of the smallest request, which readiness asks room for.
SMALLEST_CLAIM = JSON_WINDOW + RECEIVE_FIXED


def decode_cost(body_bytes: int, json_bytes: int | None) -> int:
    """Bytes a REST body of ``body_bytes`` may hold while received and decoded: the body,
    the tensor decoded from it (at most one float32 per two bytes of JSON, or the binary
    part's size; ``json_bytes`` is the Inference-Header-Content-Length, None for plain
    JSON) and one chunk of parsed JSON numbers."""
    tensor = 2 * body_bytes if json_bytes is None else body_bytes
    return body_bytes + tensor + JSON_WINDOW


class Claim:
    """One request's share of the budget: ``limit`` at most, ``held`` now. An async
    context manager: leaving it gives back what it holds."""

    __slots__ = ("budget", "held", "limit", "seq", "waited", "what")

    def __init__(self, budget: MemoryBudget, limit: int, what: str, seq: int) -> None:
        self.budget = budget
        self.limit = limit
        self.what = what
        self.seq = seq
        self.held = 0
        self.waited = 0.0  # seconds spent waiting for the budget

    @property
    def need(self) -> int:
        return self.limit - self.held

    def take_now(self, nbytes: int) -> bool:
        """Charge ``nbytes`` if the budget grants them without waiting."""
        if not self.budget.fits(self, nbytes):
            return False
        self.budget.grant(self, nbytes)
        return True

    async def take(self, nbytes: int) -> None:
        """Charge ``nbytes``, waiting for room; Overloaded once the claim has waited
        ``budget.wait`` seconds in all."""
        if nbytes > self.need:
            raise ValueError(f"{self.what} charged {nbytes} bytes past its claim")
        if not self.take_now(nbytes):
            await self.budget.wait_for(self, nbytes)

    async def take_rest(self) -> None:
        """Charge the rest of the claim (what decoding will allocate): the request has
        got through."""
        await self.take(self.need)
        self.budget.got_through()

    def close(self) -> None:
        self.budget.close(self)

    async def __aenter__(self) -> Claim:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _limit(claim: Claim) -> int:
    return claim.limit


class MemoryBudget:
    """Byte claims on one event loop, granted by the banker's rule in arrival order."""

    def __init__(
        self,
        capacity: int,
        wait: float = 5.0,
        unready_after: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity <= 0:
            raise ValueError("a memory budget needs a positive capacity")
        self.capacity = capacity
        self.wait = wait
        self.unready_after = unready_after
        self.clock = clock
        self.used = 0
        self.refused = 0
        self._need = 0  # the sum of every open claim's need
        self._largest = 0  # at least the largest open claim's limit
        self._claims: dict[Claim, None] = {}  # open claims, oldest first
        self._waiting: dict[Claim, tuple[int, asyncio.Future[None]]] = {}
        self._seq = itertools.count()
        self._refusing_since: float | None = None

    # ---- claims ---------------------------------------------------------------------

    def claim(self, limit: int, what: str = "request") -> Claim:
        """A claim of at most ``limit`` bytes, holding nothing yet; 413 past the budget."""
        if limit > self.capacity:
            raise RequestTooLarge(
                f"{what} needs {limit} bytes to receive and decode, over this runtime's "
                f"request memory of {self.capacity} bytes (HOTSWAP_REQUEST_MEMORY_BYTES); "
                "send a smaller batch, or binary tensor data instead of JSON"
            )
        claim = Claim(self, limit, what, next(self._seq))
        self._claims[claim] = None
        self._need += limit
        self._largest = max(self._largest, limit)
        return claim

    @contextlib.asynccontextmanager
    async def hold(self, nbytes: int, what: str = "request") -> AsyncIterator[None]:
        """Hold ``nbytes`` of the budget for the block (a claim taken whole)."""
        async with self.claim(nbytes, what) as claim:
            await claim.take_rest()
            yield

    def fits(self, claim: Claim, nbytes: int) -> bool:
        """Whether charging ``nbytes`` to ``claim`` leaves every older claim able to
        take the rest of its claim once the claims before it are done."""
        avail = self.capacity - self.used - nbytes
        if avail < 0:
            return False
        if avail >= self._largest or avail >= self._need - claim.need:
            return True  # any other claim could finish alone, or all of them at once
        self._largest = max(self._claims, key=_limit).limit  # it may have closed
        if avail >= self._largest:
            return True
        before = 0
        for older in self._claims:
            if older is claim:
                return True
            if older.need > avail + before:
                return False
            before += older.held
        return True

    def grant(self, claim: Claim, nbytes: int) -> None:
        claim.held += nbytes
        self.used += nbytes
        self._need -= nbytes

    def close(self, claim: Claim) -> None:
        """Give back what ``claim`` holds and drop it; wake the waiters it let through."""
        if claim not in self._claims:
            return
        del self._claims[claim]
        self.used -= claim.held
        self._need -= claim.need
        claim.held = claim.limit = 0
        self._waiting.pop(claim, None)
        if self._waiting:
            self._wake()

    def _wake(self) -> None:
        for claim in sorted(self._waiting, key=lambda c: c.seq):
            nbytes, future = self._waiting[claim]
            if future.done():
                del self._waiting[claim]
            elif self.fits(claim, nbytes):
                del self._waiting[claim]
                self.grant(claim, nbytes)
                future.set_result(None)

    async def wait_for(self, claim: Claim, nbytes: int) -> None:
        """Wait until ``nbytes`` are granted to ``claim``, at most what is left of its
        ``wait`` seconds; Overloaded after that."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[claim] = (nbytes, future)
        start = self.clock()
        try:
            async with asyncio.timeout(max(0.0, self.wait - claim.waited)):
                await future
        except TimeoutError:
            if not future.done() or future.cancelled():
                raise self._refuse(claim, nbytes) from None
        finally:
            claim.waited += self.clock() - start
            if self._waiting.get(claim, (0, None))[1] is future:
                del self._waiting[claim]

    # ---- exhaustion -----------------------------------------------------------------

    def _refuse(self, claim: Claim, nbytes: int) -> Overloaded:
        self.refused += 1
        if self._refusing_since is None:
            self._refusing_since = self.clock()
        return Overloaded(
            f"{claim.what} waited {self.wait:g}s for {nbytes} bytes of this runtime's request "
            f"memory ({self.capacity} bytes, HOTSWAP_REQUEST_MEMORY_BYTES), all held by "
            "other requests; retry later or on another replica"
        )

    def got_through(self) -> None:
        self._refusing_since = None

    def exhausted_for(self) -> float:
        """Seconds the budget has refused requests with none getting through and no room
        for a small one now; 0 when it is not exhausted."""
        since = self._refusing_since
        if since is None:
            return 0.0
        if self._room_for(SMALLEST_CLAIM):
            self._refusing_since = None
            return 0.0
        return self.clock() - since

    def exhausted(self) -> bool:
        """Whether the budget has been exhausted for ``unready_after`` seconds or more
        (never when ``unready_after`` is 0)."""
        if self.unready_after <= 0:
            return False
        return self.exhausted_for() >= self.unready_after

    def _room_for(self, limit: int) -> bool:
        """Whether a new claim of ``limit`` bytes could take them all now."""
        avail = self.capacity - self.used - limit
        if avail < 0:
            return False
        before = 0
        for older in self._claims:
            if older.need > avail + before:
                return False
            before += older.held
        return True
