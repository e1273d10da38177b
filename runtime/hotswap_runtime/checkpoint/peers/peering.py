"""Where a pod takes a checkpoint file from: a peer that holds it, else the store.

The operator lists a ModelDeployment's pods in ``peers.json``, oldest first (never from
the pods' own reports); the first ``originConcurrency`` are the origins. The origins
split the files between them: the file with sha256 ``X`` is read from the store by the
origin at ``int(X[:16], 16) % k`` in that list, or, when it does not answer its peer
port, by the next one that does. Every other pod (and every origin, for the files
another origin reads) takes ``X`` from a peer that lists it as verified: it asks the
origins and a few other peers each round (a different few each round, in an order of its
own, so requests spread), prefers a holder that is not an origin, and waits while an
origin is still working on the checkpoint (holds or downloads one of its files) and the
wait is within ``wait_seconds``. Otherwise, or after two peers failed it for one file,
it reads the store itself: distribution can only slow a pod down to the store's pace.

A peer that fails a pod once (an error, a stall past ``idle_seconds``, a reset, or bytes
whose sha256 does not match) is dropped by that pod until the next checkpoint. The whole
file's sha256 is checked before anything is used, as for the store's bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

from hotswap_contract.wire import Fetched, Peers
from hotswap_runtime.checkpoint.fetch.net import NetPolicy
from hotswap_runtime.checkpoint.fetch.stream import Sink, pump
from hotswap_runtime.checkpoint.peers.client import (
    Holdings,
    NotHeld,
    PeerAddress,
    PeerBusy,
    PeerSlow,
    holdings,
    open_blob,
)
from hotswap_runtime.errors import SwapError

log = logging.getLogger(__name__)
FANOUT = 4  # peers besides the origins asked per round
# Between rounds: doubling from the first to the last while no peer gave the file (none
# holds it, or every holder was busy), so a fleet waiting on a slow store or on busy
# peers asks little (100 pods, 2 files each, 6 peers a round: 600 listings/s at most).
ROUND_SECONDS = (0.2, 2.0)
LISTING_TTL = 0.2  # a peer's listing is reused for this long
MAX_PEER_TRIES = 2  # peers that may fail one file before the store is read

Roster = Callable[[], Peers | None]


@dataclass
class Tally:
    """Where the bytes of one checkpoint fetch came from."""

    store_bytes: int = 0
    peer_bytes: int = 0
    cached_bytes: int = 0
    peers: set[str] = field(default_factory=set)
    failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, source: str, count: int) -> None:
        with self.lock:
            if source == "store":
                self.store_bytes += count
            elif source == "cache":
                self.cached_bytes += count
            else:
                self.peer_bytes += count
                self.peers.add(source)

    def failed(self) -> None:
        with self.lock:
            self.failures += 1

    def figures(self) -> Fetched:
        return Fetched(
            storeBytes=self.store_bytes,
            peerBytes=self.peer_bytes,
            cachedBytes=self.cached_bytes,
            peers=len(self.peers),
            peerFailures=self.failures,
        )


@dataclass
class _Plan:
    """One file's view of the roster: the origins in the order they would read it, and
    the other peers in this pod's order for it."""

    origins: list[PeerAddress]
    others: list[PeerAddress]
    me: str

    @classmethod
    def of(cls, roster: Peers, me: str, port: int, sha256: str) -> _Plan:
        listed = [PeerAddress(p.name, p.ip, port) for p in roster.peers]
        count = min(roster.origin_concurrency, len(listed))
        first = int(sha256[:16], 16) % count if count else 0
        origins = listed[:count]
        rotation = origins[first:] + origins[:first]

        def rank(peer: PeerAddress) -> bytes:
            return hashlib.sha256(f"{me}/{sha256}/{peer.name}".encode()).digest()

        others = sorted((p for p in listed[count:] if p.name != me), key=rank)
        return cls(rotation, others, me)


class Peering:
    """A pod's side of peer transfer (see the module docstring)."""

    def __init__(
        self,
        me: str,
        roster: Roster,
        token: str,
        port: int,
        *,
        idle_seconds: float = 30.0,
        wait_seconds: float = 600.0,
    ) -> None:
        self.me = me
        self.roster = roster
        self.token = token
        self.port = port
        self.idle_seconds = idle_seconds
        self.wait_seconds = wait_seconds
        self.policy = NetPolicy((), idle_seconds)
        self.dropped: set[str] = set()
        self._slow: dict[str, int] = {}  # peers that did not begin an answer in time
        self._listings: dict[str, tuple[float, Holdings | None]] = {}

    def new_checkpoint(self) -> None:
        """Forget dropped and slow peers (called once per checkpoint fetched)."""
        self.dropped.clear()
        self._slow.clear()

    async def fetch(
        self,
        sha256: str,
        related: Collection[str],
        sink: Sink,
        from_store: Callable[[], Awaitable[None]],
        tally: Tally,
    ) -> None:
        """Fill ``sink`` with file ``sha256`` from a peer or, failing that, the store.
        ``related``: the sha256 of the checkpoint's other files (an origin that holds or
        downloads one of them is still working on this checkpoint)."""
        roster = self.roster()
        if roster is not None and roster.peers:
            plan = _Plan.of(roster, self.me, self.port, sha256)
            if await self._from_peers(plan, (sha256, {sha256, *related}), sink, tally):
                return
        sink.restart()
        await from_store()
        tally.add("store", sink.total)

    async def _from_peers(
        self,
        plan: _Plan,
        wanted: tuple[str, set[str]],
        sink: Sink,
        tally: Tally,
    ) -> bool:
        """True once ``sink`` holds the file from a peer; False: read the store."""
        sha256, related = wanted
        started = time.monotonic()
        deadline = started + self.wait_seconds
        tries = 0
        turn = 0
        idle = 0  # rounds in a row in which no peer gave the file
        while time.monotonic() < deadline and tries < MAX_PEER_TRIES:
            asked = plan.origins + self._some_others(plan, turn)
            listings = await self._listings_of(asked)
            if self._i_read_store(plan, listings):
                return False
            holders = self._holders(asked, plan.origins, listings, sha256)
            for holder in holders:
                outcome = await self._try(holder, sha256, sink, tally)
                if outcome is True:
                    return True
                if outcome is False:
                    tries += 1
                    break
            else:
                if not holders and not self._worth_waiting(plan, listings, related, started):
                    return False
                first, last = ROUND_SECONDS
                await asyncio.sleep(min(last, first * 2 ** min(idle, 8)))  # polling peers
                idle += 1
            turn += 1
        return False

    def _some_others(self, plan: _Plan, turn: int) -> list[PeerAddress]:
        others = [p for p in plan.others if p.name not in self.dropped]
        if len(others) <= FANOUT:
            return others
        start = (turn * FANOUT) % len(others)
        return (others + others)[start : start + FANOUT]

    def _i_read_store(self, plan: _Plan, listings: dict[str, Holdings | None]) -> bool:
        """Whether this pod is the origin that reads the file: every origin before it in
        the file's rotation did not answer."""
        for origin in plan.origins:
            if origin.name == self.me:
                return True
            if listings.get(origin.name) is not None:
                return False
        return False

    def _holders(
        self,
        asked: list[PeerAddress],
        origins: list[PeerAddress],
        listings: dict[str, Holdings | None],
        sha256: str,
    ) -> list[PeerAddress]:
        """Peers listing ``sha256`` as verified: others before origins, spreading load."""
        found = [
            p
            for p in asked
            if p.name != self.me
            and p.name not in self.dropped
            and (held := listings.get(p.name)) is not None
            and sha256 in held.have
        ]
        return sorted(found, key=lambda p: p in origins)

    def _worth_waiting(
        self,
        plan: _Plan,
        listings: dict[str, Holdings | None],
        related: set[str],
        started: float,
    ) -> bool:
        """Whether an origin will have the file: one holds or downloads a file of the
        checkpoint, or one answers and has had less than ``idle_seconds`` to start."""
        answering = [listings.get(o.name) for o in plan.origins if o.name != self.me]
        if any(held is not None and held.busy for held in answering):
            return True  # alive and loaded: it says nothing, but it is still there
        if any(held is not None and (held.have | held.fetching) & related for held in answering):
            return True
        early = time.monotonic() - started < self.idle_seconds
        return early and any(held is not None for held in answering)

    async def _try(self, peer: PeerAddress, sha256: str, sink: Sink, tally: Tally) -> bool | None:
        """True: ``sink`` holds the verified file. None: the peer was busy or no longer
        holds it (ask another). False: it failed this pod and is dropped."""
        sink.restart()
        try:
            await pump(open_blob(peer, sha256, self.token, self.idle_seconds), sink, self.policy)
        except PeerSlow as exc:  # alive but silent: twice, and it is dropped
            self._slow[peer.name] = self._slow.get(peer.name, 0) + 1
            return self._drop(peer, str(exc), tally) if self._slow[peer.name] >= 2 else None
        except (PeerBusy, NotHeld):
            return None
        except SwapError as exc:
            return self._drop(peer, str(exc), tally)
        if not sink.matches(sha256):
            return self._drop(peer, "its bytes do not match the sha256", tally)
        tally.add(peer.name, sink.total)
        return True

    def _drop(self, peer: PeerAddress, why: str, tally: Tally) -> bool:
        log.warning("peer %s dropped for this checkpoint: %s", peer.name, why)
        self.dropped.add(peer.name)
        tally.failed()
        return False

    async def _listings_of(self, peers: list[PeerAddress]) -> dict[str, Holdings | None]:
        now = time.monotonic()
        stale = [
            p for p in peers if now - self._listings.get(p.name, (-1e9, None))[0] > LISTING_TTL
        ]
        answers = await asyncio.gather(*(self._ask(p) for p in stale))
        for peer, answer in zip(stale, answers, strict=True):
            self._listings[peer.name] = (now, answer)
        return {p.name: self._listings[p.name][1] for p in peers}

    async def _ask(self, peer: PeerAddress) -> Holdings | None:
        if peer.name == self.me:
            return Holdings(frozenset(), frozenset())  # never asked: it reads for itself
        try:
            return await holdings(peer, self.token, self.idle_seconds)
        except SwapError:
            return None
