"""A work queue of object keys on the event loop, with client-go's workqueue semantics.

* A key waits at most once however often it is added (a burst of pod reports is one
  sync).
* A key is handed to one worker at a time; added again while being synced, it is
  queued again when that sync is done (nothing seen meanwhile is lost).
* `add_after` is a delayed add (a Canary step deadline, a retry): a timer on the event
  loop, never a thread; a key keeps only its earliest pending timer, since every sync
  asks for its next deadline again.
* `retry` backs off per key, exponentially, until `forget` (a sync succeeded).

Call it from the event loop's thread only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

BASE_DELAY = 0.05
MAX_DELAY = 30.0


class WorkQueue(Generic[K]):
    def __init__(self, base_delay: float = BASE_DELAY, max_delay: float = MAX_DELAY) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._timers: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._failures: dict[K, int] = {}
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        """Keys waiting for a worker (the queue depth)."""
        return len(self._queue)

    def add(self, key: K) -> None:
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._ready.set()

    def add_after(self, key: K, delay: float) -> None:
        """Add `key` in `delay` seconds (at once when <= 0), unless it is due sooner."""
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        pending = self._timers.get(key)
        if pending is not None:
            if pending[0] <= due:
                return
            pending[1].cancel()
        self._timers[key] = (due, loop.call_at(due, self._fire, key))

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> K:
        """The next key to sync; call `done(key)` when its sync is over."""
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        key = self._queue.popleft()
        if self._queue:
            self._ready.set()  # wake another worker for the next key
        self._processing.add(key)
        self._dirty.discard(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._ready.set()

    def retry(self, key: K) -> float:
        """Add `key` again after its next backoff delay; returns the delay."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = min(self.base_delay * 2.0 ** (failures - 1), self.max_delay)
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """Reset `key`'s backoff (its sync succeeded)."""
        self._failures.pop(key, None)

    def drop(self, key: K) -> None:
        """Remove every trace of `key` (its object is gone); a running sync finishes."""
        self.forget(key)
        pending = self._timers.pop(key, None)
        if pending is not None:
            pending[1].cancel()
        self._dirty.discard(key)
        if key in self._queue:
            self._queue.remove(key)

    def clear(self) -> None:
        """Drop every key (leadership lost: another replica syncs them now)."""
        for key in [*self._queue, *self._timers, *self._failures]:
            self.drop(key)
