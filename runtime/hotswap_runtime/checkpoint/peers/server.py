"""The peer port: a pod's verified cache entries, for the pods of its ModelDeployment.

A small HTTP/1.1 server (h11 parses the request; the body goes out with ``sendfile``)
on its own event-loop thread, so neither its clients nor its disk reads share the
serving loop. Two requests, each on a connection of its own (``Connection: close``):

* ``GET /v1/have``: the sha256 of every verified entry of the cache folder (``have``)
  and of every download in progress (``fetching``), at most ``MAX_LISTED`` each;
* ``GET /v1/blobs/<sha256>``: the whole file named ``<sha256>`` in the cache folder.

The store renames a file to its sha256 only once the sha256 matched, so a name is a
verified entry and a ``.tmp-*`` file is never served. Every request must carry
``Authorization: Bearer <token>``, the ModelDeployment's peer credential (a Secret the
operator creates for it and mounts in its pods only), compared in constant time.

Bounds: a request head of at most ``HEAD_BYTES``, read within ``HEAD_SECONDS``; at most
``max_connections`` connections (more are answered 503 and closed, unread) and ``max_uploads`` blobs
sent at once (a request for another waits up to ``QUEUE_SECONDS``, a quarter of the idle
bound at most, for one to end, in the order they came; then it is answered 503 and the
client asks another peer: a waiting request costs no CPU, where a 503 at once had the
whole fleet asking again every round); the bytes sent
per second across all uploads at most ``max_bytes_per_second`` (0: unbounded), and a
client that takes nothing for ``idle_seconds`` is cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import h11

log = logging.getLogger(__name__)

HEAD_BYTES = 8 << 10
HEAD_SECONDS = 5.0
MAX_LISTED = 4096
STOP_SECONDS = 5.0
SEND_BYTES = 4 << 20  # one sendfile call; the bandwidth bound is kept between calls
QUEUE_SECONDS = 2.0  # a blob request waits this long for an upload to end
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_BLOB = re.compile(r"^/v1/blobs/([0-9a-f]{64})$")
_TMP = re.compile(r"^\.tmp-([0-9a-f]{64})-")
_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class PeerLimits:
    """What one pod's peer port spends on its peers."""

    max_connections: int = 64
    max_uploads: int = 4
    max_bytes_per_second: int = 1 << 30
    idle_seconds: float = 30.0


class _Bucket:
    """A token bucket of bytes per second shared by the uploads (0: no bound)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.level = float(rate)
        self.stamp = time.monotonic()

    async def take(self, count: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self.level = min(float(self.rate), self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        self.level -= count
        if self.level < 0:
            await asyncio.sleep(-self.level / self.rate)  # the rate bound itself


def listing(cache_dir: Path) -> dict[str, list[str]]:
    """The verified entries and the downloads in progress of ``cache_dir``."""
    have: list[str] = []
    fetching: list[str] = []
    with contextlib.suppress(FileNotFoundError), os.scandir(cache_dir) as entries:
        for entry in entries:
            tmp = _TMP.match(entry.name)
            if tmp is not None and len(fetching) < MAX_LISTED:
                fetching.append(tmp.group(1))
            elif _SHA.match(entry.name) and len(have) < MAX_LISTED:
                have.append(entry.name)
    return {"have": sorted(have), "fetching": sorted(set(fetching))}


class PeerServer:
    """Serves ``cache_dir`` to the holders of ``token`` on ``host:port``."""

    def __init__(
        self,
        cache_dir: Path,
        token: str,
        host: str,
        port: int,
        limits: PeerLimits | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self._token = token.encode()
        self.host = host
        self.port = port
        self.limits = limits or PeerLimits()
        self.sent_bytes = 0
        self._connections = 0
        self._uploads = 0
        self._upload_ended = asyncio.Condition()  # made again for each loop (start)
        self._bucket = _Bucket(self.limits.max_bytes_per_second)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    def start(self) -> None:
        """Listen on a thread of its own (raises OSError when the port is taken); callable
        from a thread that runs an event loop of its own (the runtime's lifespan)."""
        loop = asyncio.new_event_loop()
        self._upload_ended = asyncio.Condition()  # bound to that loop when first used
        thread = threading.Thread(target=loop.run_forever, name="hotswap-peer", daemon=True)
        thread.start()
        listening = asyncio.start_server(self._serve, self.host, self.port, limit=HEAD_BYTES)
        try:
            server = asyncio.run_coroutine_threadsafe(listening, loop).result(STOP_SECONDS)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(STOP_SECONDS)
            loop.close()
            raise
        self._loop, self._server, self._thread = loop, server, thread
        self.port = server.sockets[0].getsockname()[1]
        log.info("peer port listening on %s:%d", self.host, self.port)

    def stop(self) -> None:
        """Close the port and every connection, then end the thread."""
        loop, server, thread = self._loop, self._server, self._thread
        if loop is None or server is None or thread is None:
            return
        self._loop = self._server = self._thread = None
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_shut(server), loop).result(STOP_SECONDS)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(STOP_SECONDS)
        if not thread.is_alive():
            loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= self.limits.max_connections:
            writer.write(_BUSY)  # the client asks another peer; nothing is read
            writer.close()
            return
        self._connections += 1
        try:
            async with asyncio.timeout(HEAD_SECONDS):
                conn, request = await _read_request(reader)
            await self._answer(_Replies(conn, writer), request)
        except (TimeoutError, ConnectionError, h11.RemoteProtocolError, _HeadTooLargeError):
            pass
        finally:
            self._connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, replies: _Replies, request: h11.Request) -> None:
        if request.method != b"GET":
            await replies.send(405, b"GET only\n")
            return
        if not self._authorized(request):
            await replies.send(401, b"peer credential missing or wrong\n")
            return
        target = request.target.decode("ascii", "replace")
        if target == "/v1/have":
            body = json.dumps(listing(self.cache_dir)).encode()
            await replies.send(200, body, b"application/json")
            return
        blob = _BLOB.match(target)
        if blob is None:
            await replies.send(404, b"no such path\n")
            return
        await self._send_blob(blob.group(1), replies)

    def _authorized(self, request: h11.Request) -> bool:
        for name, value in request.headers:
            if name == b"authorization" and value.startswith(b"Bearer "):
                return hmac.compare_digest(value[7:], self._token)
        return False

    async def _send_blob(self, sha256: str, replies: _Replies) -> None:
        try:
            file = (self.cache_dir / sha256).open("rb")
        except FileNotFoundError:
            await replies.send(404, b"not cached here\n")
            return
        with file:
            if not await self._upload_slot():
                await replies.send(503, b"busy: ask another peer\n")
                return
            try:
                size = os.fstat(file.fileno()).st_size
                replies.head(200, size, b"application/octet-stream")
                await self._send_file(file, size, replies.writer)
            finally:
                self._uploads -= 1
                async with self._upload_ended:
                    self._upload_ended.notify()

    async def _upload_slot(self) -> bool:
        """Take one of the ``max_uploads``, waiting at most QUEUE_SECONDS (and a quarter
        of the idle bound) for one to end; False when none did."""
        wait = min(QUEUE_SECONDS, self.limits.idle_seconds / 4)
        async with self._upload_ended:
            try:
                async with asyncio.timeout(wait):
                    await self._upload_ended.wait_for(
                        lambda: self._uploads < self.limits.max_uploads
                    )
            except TimeoutError:
                return False
            self._uploads += 1
            return True

    async def _send_file(self, file: object, size: int, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        offset = 0
        while offset < size:
            count = min(SEND_BYTES, size - offset)
            await self._bucket.take(count)
            async with asyncio.timeout(self.limits.idle_seconds):
                await writer.drain()
                sent = await loop.sendfile(writer.transport, file, offset, count)  # type: ignore[arg-type]
            offset += sent
            self.sent_bytes += sent


async def _shut(server: asyncio.Server) -> None:
    server.close()
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


class _HeadTooLargeError(Exception):
    pass


@dataclass
class _Replies:
    """One connection's response: h11 writes the head, the body follows it as is."""

    conn: h11.Connection
    writer: asyncio.StreamWriter

    def head(self, status: int, length: int, kind: bytes) -> None:
        headers = [
            (b"Content-Type", kind),
            (b"Content-Length", b"%d" % length),
            (b"Connection", b"close"),
        ]
        self.writer.write(self.conn.send(h11.Response(status_code=status, headers=headers)) or b"")

    async def send(self, status: int, body: bytes, kind: bytes = b"text/plain") -> None:
        self.head(status, len(body), kind)
        self.writer.write(body)
        await self.writer.drain()


async def _read_request(reader: asyncio.StreamReader) -> tuple[h11.Connection, h11.Request]:
    """The request head, at most HEAD_BYTES, and the connection that answers it."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_BYTES)
    received = 0
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            return conn, event
        if event is not h11.NEED_DATA:
            raise h11.RemoteProtocolError("not a request")
        data = await reader.read(HEAD_BYTES)
        if not data:
            raise ConnectionError("closed before a request")
        received += len(data)
        if received > HEAD_BYTES:
            raise _HeadTooLargeError
        conn.receive_data(data)
