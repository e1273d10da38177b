"""Asking a peer (peers/server.py): what it holds, and one of its files as a ``Body``.

Peers are addressed by the IP the operator listed (from the Pod objects) and the peer
port; no name is resolved, no redirect followed, no proxy used, and every request
carries the ModelDeployment's peer credential. Answers are bounded (a response head at
most ``HEAD_BYTES``, a listing at most ``MAX_LISTING_BYTES``), and a blob is a ``Body``
like any fetcher's: the store's sink hashes it, and nothing is used before its sha256
matched.

Both requests are one GET on a connection of its own: h11 writes the request and parses
the answer's head, and the body (``Content-Length`` bytes; nothing else is taken) is
received with ``recv_into`` straight into one buffer of ``CHUNK_BYTES`` that each chunk
reuses (the sink has hashed and written a chunk before the next is asked for). Peers
are most of the bytes a pod receives: httpx read them 64 KiB at a time and copied each
byte four times on its way through h11, its buffers and its chunker, in Python per
64 KiB, and built a client (a TLS context and a pool) per file fetched.
"""

# ruff: noqa: N818  (named like the runtime's errors: Dropped, Superseded, ...)
from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import h11

from hotswap_runtime.checkpoint.fetch.stream import Body
from hotswap_runtime.errors import FetchError

MAX_LISTING_BYTES = 1 << 20
HEAD_BYTES = 16 << 10
# A blob's receive buffer: one sink slice (stream.SLICE_BYTES), so a chunk is still in
# the core's cache when it is hashed and written.
CHUNK_BYTES = 1 << 20
CONNECT_SECONDS = 2.0


class PeerBusy(FetchError):
    """The peer sends as many files as it may at once, or did not answer this time:
    ask another."""


class PeerSlow(PeerBusy):
    """The peer did not begin its answer within the idle bound."""


class Refused(PeerBusy):
    """Nothing listens at the peer's address (the connection was refused)."""


class NotHeld(FetchError):
    """The peer does not hold the file (any more)."""


class Unreachable(FetchError):
    """The peer did not answer: not listening, gone, or broke off its answer."""


@dataclass(frozen=True)
class PeerAddress:
    name: str
    ip: str
    port: int


@dataclass(frozen=True)
class Holdings:
    """What a peer listed: the files it verified, and those it is downloading; or that
    it is alive but ``busy`` (answered 503, or too slow to answer this time)."""

    have: frozenset[str]
    fetching: frozenset[str]
    busy: bool = False


BUSY = Holdings(frozenset(), frozenset(), busy=True)


@dataclass(frozen=True)
class _Answer:
    """An answer's status, declared body size and the body bytes that came with its head."""

    status: int
    size: int
    early: bytes


async def holdings(peer: PeerAddress, token: str, idle_seconds: float) -> Holdings:
    """``GET /v1/have`` of ``peer``; BUSY when it is alive but does not say this time
    (503, no whole answer within ``idle_seconds``, or a broken one: only a refused
    connection means that nothing listens); Unreachable (nothing listens) or FetchError
    (a wrong answer) otherwise."""
    try:
        async with asyncio.timeout(idle_seconds):
            raw = await _listing(peer, token, idle_seconds)
    except Refused:
        raise Unreachable(f"peer {peer.name} did not answer (connection refused)") from None
    except (PeerBusy, Unreachable, TimeoutError):
        return BUSY
    return BUSY if raw is None else _parse_holdings(raw, peer)


async def _listing(peer: PeerAddress, token: str, idle_seconds: float) -> bytes | None:
    """The listing's bytes; None when the peer answered 503."""
    async with _get(peer, "/v1/have", token, idle_seconds) as (answer, body):
        if answer.status == 503:
            return None
        if answer.status != 200:
            raise FetchError(f"peer {peer.name} answered /v1/have with HTTP {answer.status}")
        if answer.size > MAX_LISTING_BYTES:
            raise FetchError(f"peer {peer.name}: its listing is over {MAX_LISTING_BYTES} bytes")
        return b"".join([bytes(chunk) async for chunk in body])


def _parse_holdings(raw: bytes, peer: PeerAddress) -> Holdings:
    try:
        doc = json.loads(raw)
        have, fetching = doc["have"], doc["fetching"]
        if not all(isinstance(x, str) for x in [*have, *fetching]):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise FetchError(f"peer {peer.name}: its listing is not the expected JSON") from None
    return Holdings(frozenset(have), frozenset(fetching))


@asynccontextmanager
async def open_blob(
    peer: PeerAddress, sha256: str, token: str, idle_seconds: float
) -> AsyncIterator[Body]:
    """The file ``sha256`` of ``peer`` as a Body (its declared size, its chunks: views of
    one reused buffer, each valid until the next is asked for). PeerBusy when it answers
    503 or nothing at all before its answer began (PeerSlow: not within
    ``idle_seconds``; ask another); once its answer began, any failure is its own
    (Unreachable, FetchError)."""
    async with _get(peer, f"/v1/blobs/{sha256}", token, idle_seconds) as (answer, body):
        if answer.status == 503:
            raise PeerBusy(f"peer {peer.name} is busy")
        if answer.status == 404:
            raise NotHeld(f"peer {peer.name} does not hold {sha256[:12]}")
        if answer.status != 200:
            raise FetchError(f"peer {peer.name} answered HTTP {answer.status}")
        yield Body(answer.size, body)


@asynccontextmanager
async def _get(
    peer: PeerAddress, target: str, token: str, idle_seconds: float
) -> AsyncIterator[tuple[_Answer, AsyncGenerator[memoryview, None]]]:
    """``GET target`` of ``peer`` on a connection of its own: the answer's head and its
    body's chunks (``pump`` or the caller bounds the wait for each). Before the answer
    began: Refused, PeerSlow (no answer within ``idle_seconds``) or PeerBusy (anything
    else, a connection not accepted within CONNECT_SECONDS included);
    FetchError for an answer without a Content-Length."""
    sock = await _connect(peer, idle_seconds)
    try:
        answer = await _ask(sock, peer, target, token, idle_seconds)
        yield answer, _body(sock, peer, answer)
    finally:
        sock.close()


async def _connect(peer: PeerAddress, idle_seconds: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in peer.ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(min(CONNECT_SECONDS, idle_seconds)):
            await asyncio.get_running_loop().sock_connect(sock, (peer.ip, peer.port))
    except BaseException as exc:
        sock.close()
        if isinstance(exc, TimeoutError):  # its accept queue is full: busy, not slow
            raise PeerBusy(f"peer {peer.name} did not answer (connect timeout)") from None
        if isinstance(exc, ConnectionRefusedError):
            raise Refused(f"peer {peer.name} did not answer (connection refused)") from None
        if isinstance(exc, OSError):
            raise PeerBusy(f"peer {peer.name} did not answer ({type(exc).__name__})") from None
        raise
    return sock


async def _ask(
    sock: socket.socket, peer: PeerAddress, target: str, token: str, idle_seconds: float
) -> _Answer:
    """Send the request; the answer's head and the body bytes that came with it."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=HEAD_BYTES)
    host = f"[{peer.ip}]:{peer.port}" if ":" in peer.ip else f"{peer.ip}:{peer.port}"
    headers = [("Host", host), ("Authorization", f"Bearer {token}"), ("Connection", "close")]
    request = h11.Request(method="GET", target=target, headers=headers)
    try:
        async with asyncio.timeout(idle_seconds):
            head = (conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b"")
            await asyncio.get_running_loop().sock_sendall(sock, head)
            response = await _head(sock, conn)
    except TimeoutError:
        raise PeerSlow(f"peer {peer.name} did not answer (read timeout)") from None
    except (OSError, h11.RemoteProtocolError) as exc:
        raise PeerBusy(f"peer {peer.name} did not answer ({type(exc).__name__})") from None
    size = _size(dict(response.headers), peer)
    return _Answer(response.status_code, size, _early_body(conn, peer))


async def _head(sock: socket.socket, conn: h11.Connection) -> h11.Response:
    loop = asyncio.get_running_loop()
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            return event
        if event is not h11.NEED_DATA:  # an informational answer, or the connection closed
            raise h11.RemoteProtocolError(f"no response ({type(event).__name__})")
        conn.receive_data(await loop.sock_recv(sock, HEAD_BYTES))


def _early_body(conn: h11.Connection, peer: PeerAddress) -> bytes:
    """The body bytes h11 received with the head (the rest bypasses it)."""
    early = bytearray()
    try:
        while isinstance(event := conn.next_event(), h11.Data):
            early += event.data
    except h11.RemoteProtocolError:
        raise Unreachable(f"peer {peer.name} broke off (RemoteProtocolError)") from None
    return bytes(early)


def _size(headers: dict[bytes, bytes], peer: PeerAddress) -> int:
    if b"transfer-encoding" in headers:
        raise FetchError(f"peer {peer.name} sent no Content-Length")
    try:
        size = int(headers.get(b"content-length", b""))
    except ValueError:
        raise FetchError(f"peer {peer.name} sent no Content-Length") from None
    if size < 0:
        raise FetchError(f"peer {peer.name} sent a negative Content-Length")
    return size


async def _body(
    sock: socket.socket, peer: PeerAddress, answer: _Answer
) -> AsyncGenerator[memoryview, None]:
    """The answer's ``size`` bytes: ``early``, then the socket's, a full buffer at a
    time (the last one short); no wait bound of its own."""
    size, early = answer.size, answer.early
    if len(early) > size:
        raise FetchError(f"peer {peer.name} sent more than its Content-Length")
    if early:
        yield memoryview(early)
    got = len(early)
    loop = asyncio.get_running_loop()
    view = memoryview(bytearray(min(CHUNK_BYTES, max(size - got, 1))))
    while got < size:
        want = min(len(view), size - got)
        filled = 0
        while filled < want:
            try:
                count = await loop.sock_recv_into(sock, view[filled:want])
            except OSError as exc:
                raise Unreachable(f"peer {peer.name} broke off ({type(exc).__name__})") from None
            if count == 0:
                raise Unreachable(
                    f"peer {peer.name} broke off after {got + filled} of {size} bytes"
                )
            filled += count
        got += filled
        yield view[:filled]
