"""The event-loop thread on which a store's downloads run, and how a caller stops one.

A download is an asyncio task on one loop thread that the store owns. The calling
thread (the swap worker) waits for it while polling its ``cancelled`` callback every
``POLL_SECONDS``; when a newer revision is wanted it cancels the task, which stops
whatever the task awaits (resolving, connecting, waiting for headers or for the next
chunk), waits briefly for its cleanup, and raises ``Superseded``. No wait of a download
blocks the caller beyond one poll.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from hotswap_runtime.errors import FetchError, Superseded

T = TypeVar("T")
POLL_SECONDS = 0.1
CLEANUP_SECONDS = 2.0  # for a cancelled task to close its connection and files


class FetchLoop:
    """One daemon thread running an asyncio loop, started on first use."""

    def __init__(self, name: str = "hotswap-fetch") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def run(
        self,
        make: Callable[[], Coroutine[Any, Any, T]],
        cancelled: Callable[[], bool],
        shown: str,
    ) -> T:
        """The result of the coroutine ``make()`` run on the loop; Superseded (within one
        poll) once ``cancelled()`` is true; the coroutine's exception if it raised one."""
        loop = self._running()
        outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
        finished = threading.Event()
        tasks: list[asyncio.Task[None]] = []

        def start() -> None:
            task = loop.create_task(_settle(make, outcome))
            task.add_done_callback(lambda _: finished.set())
            tasks.append(task)

        loop.call_soon_threadsafe(start)
        try:
            while not finished.wait(POLL_SECONDS):
                if cancelled():
                    raise Superseded(f"download of {shown} stopped: a newer revision is wanted")
        finally:
            if not finished.is_set():  # superseded, or the caller itself failed
                loop.call_soon_threadsafe(lambda: tasks[0].cancel())  # runs after start()
                finished.wait(CLEANUP_SECONDS)
        if not outcome.done():  # cancelled by close(): the runtime is stopping
            raise FetchError(f"download of {shown} stopped: the runtime is stopping")
        return outcome.result()

    def close(self) -> None:
        """Stop the loop thread (a later ``run`` starts a new one)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        with contextlib.suppress(concurrent.futures.TimeoutError):
            asyncio.run_coroutine_threadsafe(_cancel_all(), loop).result(CLEANUP_SECONDS)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CLEANUP_SECONDS)
        if not thread.is_alive():
            loop.close()

    def _running(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop


async def _settle(
    make: Callable[[], Coroutine[Any, Any, T]], outcome: concurrent.futures.Future[T]
) -> None:
    """Run ``make()`` and settle ``outcome`` with what it returned or raised."""
    try:
        result = await make()
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        outcome.set_exception(exc)
    else:
        outcome.set_result(result)


async def _cancel_all() -> None:
    """Cancel every other task on this loop and wait for their cleanup."""
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
