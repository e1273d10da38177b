"""A REST request's head (request line and headers), bounded in size and time, and the
number of connections it may come on.

uvicorn's httptools protocol buffers a head whole, however large and however slowly it
comes, and keeps a connection that never sends a byte forever. ``bounded_protocol``
subclasses it (uvicorn 0.54: ``HttpToolsProtocol``; pinned in pyproject.toml):

* size: the bytes of reads that end inside a head are counted as they arrive; past
  ``max_bytes`` the connection is answered 431 and closed before the rest is read. A
  head that comes whole in one read (asyncio reads up to 256 KiB) is measured once
  parsed, and answered 431 through the application path (``Connection: close``);
* time: a connection waiting for a request (just opened, or its last response sent)
  must send its first byte within uvicorn's ``timeout_keep_alive`` (closed silently,
  as uvicorn already does after a response) and the whole head within ``seconds``
  (408, ``Connection: close``). One timer per connection, re-armed only when it fires,
  so a request pays a clock read, not a timer;
* count: uvicorn's ``limit_concurrency`` answers 503 to requests while ``connections``
  are open; a connection opened beyond that is closed at once, unread.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from hotswap_runtime.serving.body import QuietLog

log = logging.getLogger(__name__)
REFUSED = QuietLog(log)


@dataclass(frozen=True)
class HeadLimits:
    """How large a request head may be, how long it may take, how many connections."""

    max_bytes: int = 64 << 10
    seconds: float = 10.0
    connections: int = 1000


def too_large(limits: HeadLimits) -> str:
    return (
        f"request head over {limits.max_bytes} bytes (HOTSWAP_HEAD_BYTES): "
        "send fewer or shorter headers, or a shorter URL"
    )


def too_slow(limits: HeadLimits) -> str:
    return (
        f"request head too slow: not received whole within {limits.seconds:g}s "
        "(HOTSWAP_HEAD_SECONDS)"
    )


def refusal(status: int, text: str) -> bytes:
    """A whole HTTP/1.1 answer: ``{"error": text}`` and ``Connection: close``."""
    body = json.dumps({"error": text}).encode()
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class HeadBoundProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of ``limits`` (set by
    ``bounded_protocol``)."""

    limits = HeadLimits()

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._head = 0  # bytes counted of the head being read; -1 past a head
        self._heads = 0  # heads completed on this connection
        self._read = 0  # bytes in the read being parsed
        self._since = 0.0  # when the connection began waiting for a request
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.connections:
            self.transport.close()
            return
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )
        self._wait()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        before, heads, self._read = self._head, self._heads, len(data)
        super().data_received(data)
        if before < 0 or self._head < 0 or heads != self._heads:
            return  # the read did not start and end inside one head: not all head bytes
        self._head += len(data)
        if self._head > self.limits.max_bytes and not self.transport.is_closing():
            self._refuse(431, too_large(self.limits))

    def on_headers_complete(self) -> None:
        grown, self._head, self._heads = self._head + self._read, -1, self._heads + 1
        if grown > self.limits.max_bytes and self._size() > self.limits.max_bytes:
            REFUSED.warning(
                "refused a request head from %s: %s", self._peer(), too_large(self.limits)
            )
            app, self.app = self.app, _answer(431, too_large(self.limits))
            try:
                super().on_headers_complete()
            finally:
                self.app = app
            return
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._wait()

    def _size(self) -> int:
        """The head just parsed: request line and header lines, as sent but for spaces."""
        lines = sum(len(name) + len(value) + 4 for name, value in self.headers)
        return len(self.url) + 21 + lines  # method (7 at most), spaces, version, CRLFs

    def _wait(self) -> None:
        """Start the head's clock: the connection waits for a request from now on."""
        self._since = self.loop.time()
        if self._timer is None:
            self._timer = self.loop.call_at(self._since + self.limits.seconds, self._due)

    def _waiting(self) -> bool:
        """No request being answered: whatever comes now is (before) the next head."""
        return self.cycle is None or self.cycle.response_complete

    def _due(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self not in self.connections or not self._waiting():
            return  # closed, upgraded to a websocket, or a request under way
        due = self._since + self.limits.seconds
        if self.loop.time() < due:
            self._timer = self.loop.call_at(due, self._due)
            return
        self._refuse(408, too_slow(self.limits))

    def _refuse(self, status: int, text: str) -> None:
        """Answer ``status`` and close, unless a response is being sent (then close)."""
        REFUSED.warning("refused a request head from %s: %s", self._peer(), text)
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(refusal(status, text))
        self.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"


def _answer(status: int, text: str) -> Any:
    """An ASGI app that answers every request ``status`` with ``{"error": text}``."""
    body = json.dumps({"error": text}).encode()
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def bounded_protocol(limits: HeadLimits) -> type[HeadBoundProtocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)``."""
    return type("HeadBoundProtocol", (HeadBoundProtocol,), {"limits": limits})
