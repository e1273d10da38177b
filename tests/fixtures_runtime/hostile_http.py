"""Hostile HTTP endpoints on loopback for fetch tests: stalls, trickles, redirects, leaks.

``serve()`` runs a real threaded HTTP server on a chosen loopback address (127.0.0.2
works too, for "another address" tests) and routes requests by path prefix to the
behaviours below. It records every request (path and headers) and counts every accepted
connection, so a test can prove that a refused redirect target was never connected to
and that a header did not travel. Handlers that stall wait on an event that is released
when the server stops, never on a timer.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from devcluster.ranges import send_range_head

Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    method: str = "GET"


@dataclass
class Hostile:
    """A running hostile server: where it listens and what it saw."""

    url: str
    host: str
    port: int
    release: threading.Event
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    reached: threading.Event = field(default_factory=threading.Event)

    def route(self, prefix: str, handler: Route) -> str:
        """Serve ``prefix`` with ``handler``; the URL of that prefix."""
        self.routes[prefix] = handler
        return self.url + prefix


@contextmanager
def serve(host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> Iterator[Hostile]:
    release = threading.Event()
    state: Hostile

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            return None

        def do_GET(self) -> None:
            state.requests.append(Request(self.path, dict(self.headers.items()), self.command))
            state.reached.set()
            for prefix, handler in sorted(state.routes.items(), key=lambda kv: -len(kv[0])):
                if self.path.startswith(prefix):
                    handler(self)
                    return
            self.send_error(404)

        def do_HEAD(self) -> None:
            self.do_GET()  # routes that serve HEAD look at h.command (hub_lfs)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def verify_request(self, request: Any, client_address: Any) -> bool:
            state.connections += 1
            return True

        def handle_error(self, request: Any, client_address: Any) -> None:
            return None  # a client that hung up on a stalled answer: expected here

    server = Server((host, 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    port = int(server.server_address[1])
    scheme = "https" if tls is not None else "http"
    state = Hostile(f"{scheme}://{host}:{port}", host, port, release)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def send_head(h: BaseHTTPRequestHandler, length: int | None, status: int = 200) -> None:
    h.send_response(status)
    if length is not None:
        h.send_header("Content-Length", str(length))
    h.send_header("Content-Type", "application/octet-stream")
    h.end_headers()


def _write(h: BaseHTTPRequestHandler, data: bytes) -> bool:
    try:
        h.wfile.write(data)
        h.wfile.flush()
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
        return False
    return True


def whole(data: bytes) -> Route:
    """Answer 200 with ``data``."""

    def route(h: BaseHTTPRequestHandler) -> None:
        send_head(h, len(data))
        _write(h, data)

    return route


def stall_after(data: bytes, sent: int, release: threading.Event, wrote: threading.Event) -> Route:
    """Headers for all of ``data``, its first ``sent`` bytes, then nothing until release."""

    def route(h: BaseHTTPRequestHandler) -> None:
        send_head(h, len(data))
        _write(h, data[:sent])
        wrote.set()
        release.wait()

    return route


def stall_before(release: threading.Event) -> Route:
    """Read the request, then send nothing (not even a status line) until release."""

    def route(h: BaseHTTPRequestHandler) -> None:
        release.wait()

    return route


def trickle(data: bytes, piece: int, pause: float) -> Route:
    """Send ``data`` in pieces of ``piece`` bytes, ``pause`` seconds apart: slow, steady."""

    def route(h: BaseHTTPRequestHandler) -> None:
        send_head(h, len(data))
        for start in range(0, len(data), piece):
            if not _write(h, data[start : start + piece]):
                return
            time.sleep(pause)  # the trickle itself, not a wait for a condition

    return route


def redirect(location: str, status: int = 302) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return route


def linked(sha256: str, size: int, commit: str) -> list[tuple[str, str]]:
    """The headers the Hugging Face Hub sends for an LFS file at ``commit``."""
    return [
        ("X-Linked-Etag", f'"{sha256}"'),
        ("X-Linked-Size", str(size)),
        ("X-Repo-Commit", commit),
    ]


def hub_lfs(location: str, headers: list[tuple[str, str]], status: int = 302) -> Route:
    """The Hub's answer for an LFS file, to HEAD and GET alike: ``status`` (a redirect to
    its storage at ``location``) with ``headers`` (``linked``, or broken ones), no body."""

    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Location", location)
        for name, value in headers:
            h.send_header(name, value)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return route


def leak(marker: str, status: int = 500) -> Route:
    """An error whose reason phrase, headers and body all carry ``marker``."""

    def route(h: BaseHTTPRequestHandler) -> None:
        body = f"<Error><Message>{marker}</Message><Key>{marker}</Key></Error>".encode()
        h.send_response(status, f"Failed {marker}")
        h.send_header("X-Debug", marker)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            _write(h, body)

    return route


def unused_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextmanager
def unanswered(host: str = "127.0.0.1") -> Iterator[int]:
    """A port that never completes a connection: its listen queue is full and nobody
    accepts, so the kernel drops further SYNs and a connect waits until it gives up."""
    fillers: list[socket.socket] = []
    with socket.socket() as server:
        server.bind((host, 0))
        server.listen(0)
        port = int(server.getsockname()[1])
        try:
            for _ in range(64):  # fill the queue: until a connect no longer completes
                filler = socket.socket()
                fillers.append(filler)
                filler.settimeout(0.3)
                try:
                    filler.connect((host, port))
                except TimeoutError:
                    filler.close()  # so that only a client's SYN_SENT shows (connecting())
                    break
            else:
                raise AssertionError("the listen queue never filled")
            yield port
        finally:
            for filler in fillers:
                filler.close()


def connecting(port: int) -> bool:
    """Whether a socket of this machine is sending SYNs to ``port`` (IPv4 SYN_SENT)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "02" and int(fields[2].split(":")[1], 16) == port:
            return True
    return False


def ranged(
    data: bytes, drop_after: int | None = None, drops: int = 1, honour: bool = True
) -> Route:
    """Serve ``data`` with ``Accept-Ranges: bytes`` (206 for ``Range: bytes=a-b``); the
    first ``drops`` answers send at most ``drop_after`` bytes of their body and then
    close the connection mid-body. ``honour=False``: answer a range request with 200."""
    left = [drops]
    lock = threading.Lock()

    def route(h: BaseHTTPRequestHandler) -> None:
        start, end = send_range_head(h, len(data), honour)
        body = data[start:end]
        with lock:
            drop = drop_after is not None and left[0] > 0
            left[0] -= drop
        if drop:
            assert drop_after is not None
            _write(h, body[:drop_after])
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)  # the connection breaks off mid-body
            return
        _write(h, body)

    return route
