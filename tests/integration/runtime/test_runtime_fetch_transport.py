"""The downloads' transport (fetch/transport.py) against real servers on loopback: what
a read over TLS hands over, what closing a response early does to the server's sending,
and a kept-alive connection that the server closed while idle."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from devcluster import certs
from hotswap_runtime.checkpoint.fetch.http import http_client
from hotswap_runtime.checkpoint.fetch.net import NetPolicy
from tests.fixtures_runtime import hostile_http as hostile

POLICY = NetPolicy.of(["127.0.0.1/32"], 5.0)
RECORD_BYTES = 16 << 10  # the most a TLS record carries
WAIT_SECONDS = 10.0  # bounds a wait for a condition; a test waits less when it holds


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server context for ``localhost``, trusted by the downloads' client."""
    pair = certs.self_signed(tmp_path, "localhost", ("localhost",))
    monkeypatch.setenv("SSL_CERT_FILE", str(pair.cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert, pair.key)
    return context


def test_a_read_over_tls_hands_over_more_than_one_record(tls: ssl.SSLContext) -> None:
    """Every record that arrived is handed over at once (up to httpcore's 64 KiB), not
    one 16 KiB record per trip through the client."""
    body = bytes(range(256)) * 1024  # 256 KiB
    sent = threading.Event()

    def route(h: BaseHTTPRequestHandler) -> None:
        hostile.send_head(h, len(body))
        h.wfile.write(body)
        sent.set()

    async def chunks(url: str) -> list[bytes]:
        async with http_client(POLICY) as client, client.stream("GET", url) as response:
            # every byte is on its way before the first read
            assert await asyncio.to_thread(sent.wait, WAIT_SECONDS)
            return [chunk async for chunk in response.aiter_raw()]

    with hostile.serve(tls=tls) as server:
        server.route("/body", route)
        got = asyncio.run(chunks(f"https://localhost:{server.port}/body"))
    assert b"".join(got) == body
    assert max(len(chunk) for chunk in got) > RECORD_BYTES


@pytest.mark.parametrize("secure", [False, True], ids=["http", "https"])
def test_a_response_closed_before_its_end_stops_the_servers_sending(
    secure: bool, request: pytest.FixtureRequest
) -> None:
    """Closing a response after its first chunk drops the connection at once (no TLS
    close_notify awaited), so the server's next writes fail instead of all its bytes
    being read and thrown away."""
    tls = request.getfixturevalue("tls") if secure else None
    broke, finished = threading.Event(), threading.Event()
    size, piece = 256 << 20, 64 << 10

    def route(h: BaseHTTPRequestHandler) -> None:
        hostile.send_head(h, size)
        try:
            for _ in range(size // piece):
                h.wfile.write(bytes(piece))
        except OSError:
            broke.set()
            return
        finished.set()

    async def first_chunk(url: str) -> None:
        async with http_client(POLICY) as client, client.stream("GET", url) as response:
            await anext(response.aiter_raw())

    with hostile.serve(tls=tls) as server:
        server.route("/large", route)
        scheme = "https" if secure else "http"
        asyncio.run(first_chunk(f"{scheme}://localhost:{server.port}/large"))
        assert broke.wait(WAIT_SECONDS)
    assert not finished.is_set()


@contextmanager
def closing_after_each_answer(body: bytes) -> Iterator[tuple[int, list[threading.Event]]]:
    """A server that answers each connection's first request with ``body`` (kept alive,
    by HTTP/1.1's default) and then closes it; one event per connection, set once closed."""
    listener = socket.create_server(("127.0.0.1", 0))
    closed: list[threading.Event] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            done = threading.Event()
            closed.append(done)
            with conn:
                request = b""
                while b"\r\n\r\n" not in request and (data := conn.recv(4096)):
                    request += data
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                conn.sendall(head + body)
            done.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], closed
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        listener.close()
        thread.join(WAIT_SECONDS)


def test_a_kept_alive_connection_that_the_server_closed_is_not_reused() -> None:
    """The pool sees that an idle connection was closed by the server and opens a new
    one for the next request, instead of sending it into a closed connection."""

    async def two_requests(url: str, closed: list[threading.Event]) -> list[bytes]:
        async with http_client(POLICY) as client:
            first = await client.get(url)
            assert await asyncio.to_thread(closed[0].wait, WAIT_SECONDS)
            second = await client.get(url)
        return [first.content, second.content]

    with closing_after_each_answer(b"weights") as (port, closed):
        answers = asyncio.run(two_requests(f"http://127.0.0.1:{port}/m", closed))
        assert answers == [b"weights", b"weights"]
        assert len(closed) == 2


def test_a_refused_connection_is_httpx_connect_error() -> None:
    """The fetchers' reasons come from httpx's exception types: the transport maps
    httpcore's (and the socket's) to them."""
    port = hostile.unused_port()

    async def get() -> None:
        async with http_client(POLICY) as client:
            await client.get(f"http://127.0.0.1:{port}/m")

    with pytest.raises(httpx.ConnectError):
        asyncio.run(get())
