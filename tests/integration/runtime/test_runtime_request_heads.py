"""REST request heads are bounded in size and time, and connections in number.

Against a real runtime process, with raw sockets: a 10 MB header is refused once it
passes HOTSWAP_HEAD_BYTES and the process's peak RSS does not grow by it; a head
trickled a line at a time is cut off after HOTSWAP_HEAD_SECONDS; connections that send
nothing are closed after HOTSWAP_KEEP_ALIVE_SECONDS; past HOTSWAP_MAX_CONNECTIONS
requests are answered 503 and further connections closed. Benign REST infer requests
running meanwhile all succeed.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures_runtime.server import (
    RuntimeProcess,
    publish_tiny,
    reset_peak,
    running,
    status_kib,
    wait_for,
)

INFER = "/v2/models/tiny/infer"
BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
).encode()
HEAD_SECONDS = 2.0  # HOTSWAP_HEAD_SECONDS in these tests
KEEP_ALIVE = 1  # HOTSWAP_KEEP_ALIVE_SECONDS
REQUEST_LINE = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    root = tmp_path_factory.mktemp("heads")
    env = {
        "HOTSWAP_CONFIG_DIR": publish_tiny(root),
        "HOTSWAP_HEAD_SECONDS": str(HEAD_SECONDS),
        "HOTSWAP_KEEP_ALIVE_SECONDS": str(KEEP_ALIVE),
    }
    with running(root, env) as process:
        yield process


@contextlib.contextmanager
def benign(url: str) -> Iterator[list[str]]:
    """Two clients posting infer requests in a loop (5 s timeout each) meanwhile; what
    each request got ("ok" or what went wrong)."""
    results: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=url, timeout=5) as client:
            while not stop.is_set():
                try:
                    answer = client.post(INFER, content=BODY)
                    results.append("ok" if answer.status_code == 200 else str(answer.status_code))
                except httpx.HTTPError as exc:
                    results.append(type(exc).__name__)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        yield results
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


def all_ok(results: list[str]) -> None:
    failed = [r for r in results if r != "ok"]
    assert results and not failed, f"{len(failed)} of {len(results)} failed: {failed[:10]}"


def connect(runtime: RuntimeProcess) -> socket.socket:
    host, port = runtime.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def answer(sock: socket.socket) -> bytes:
    """What the server sent (up to 64 KiB) until it closed or reset the connection, or
    until one whole answer came (it ends with its body, which has no newline)."""
    got = b""
    with contextlib.suppress(OSError):
        while len(got) < 65536 and not got.endswith(b"}"):
            more = sock.recv(65536)
            if not more:
                break
            got += more
    return got


def test_a_10mb_header_is_refused_past_the_bound_and_not_held(runtime: RuntimeProcess) -> None:
    pid = runtime.process.pid
    with benign(runtime.url) as results, connect(runtime) as sock:
        wait_for(lambda: len(results) > 20, 20, "benign requests")  # warmed up
        reset_peak(pid)  # VmHWM := VmRSS
        base = status_kib(pid, "VmHWM")
        sent, piece = 0, b"a" * (64 << 10)
        try:
            sock.sendall(REQUEST_LINE + b"X-Big: ")
            while sent < 10 << 20:
                sock.sendall(piece)
                sent += len(piece)
            sock.sendall(b"\r\n\r\n")
            whole = True
        except OSError:
            whole = False
        got = answer(sock)
        peak = status_kib(pid, "VmHWM")
    assert not whole or got.startswith(b"HTTP/1.1 431"), f"10 MB head accepted: {got[:80]!r}"
    assert got == b"" or got.startswith(b"HTTP/1.1 431"), got[:200]
    assert (peak - base) << 10 < 4 << 20, f"peak RSS grew by {(peak - base) >> 10} MiB"
    assert "refused a request head from 127.0.0.1" in runtime.log(), runtime.log()
    all_ok(results)


def test_a_head_over_the_bound_sent_at_once_is_answered_431(runtime: RuntimeProcess) -> None:
    for size in (70 << 10, 200 << 10):
        with connect(runtime) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(REQUEST_LINE + b"X-Big: " + b"a" * size + b"\r\n\r\n")
            got = answer(sock)
        assert got == b"" or got.startswith(b"HTTP/1.1 431"), got[:200]
        if got:
            assert b"HOTSWAP_HEAD_BYTES" in got and b"connection: close" in got.lower(), got
    big_but_allowed = REQUEST_LINE + b"X-Big: " + b"a" * (60 << 10) + b"\r\n\r\n"
    with connect(runtime) as sock:
        sock.sendall(big_but_allowed)
        assert answer(sock).startswith(b"HTTP/1.1 200"), "a 60 KiB head is allowed"


def test_trickled_heads_are_cut_off_after_the_head_deadline(runtime: RuntimeProcess) -> None:
    """Ten clients send a header line every 0.2 s, none ever ending its head."""
    selector = selectors.DefaultSelector()
    cut: list[tuple[bytes, float]] = []
    with benign(runtime.url) as results:
        started = time.monotonic()
        for _ in range(10):
            sock = connect(runtime)
            sock.sendall(REQUEST_LINE)
            selector.register(sock, selectors.EVENT_READ)
        while selector.get_map() and time.monotonic() - started < HEAD_SECONDS + 10:
            for key, _ in selector.select(0.2):
                selector.unregister(key.fileobj)
                cut.append((answer(key.fileobj), time.monotonic() - started))  # type: ignore[arg-type]
                key.fileobj.close()  # type: ignore[union-attr]
            for key in list(selector.get_map().values()):
                with contextlib.suppress(OSError):
                    key.fileobj.send(b"X-Slow: 1\r\n")  # type: ignore[union-attr]
        for key in list(selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
    assert len(cut) == 10, f"trickled heads not cut off: {cut}"
    assert all(got.startswith(b"HTTP/1.1 408") or got == b"" for got, _ in cut), cut
    assert all(seconds < HEAD_SECONDS + 1.5 for _, seconds in cut), cut
    assert any(b"HOTSWAP_HEAD_SECONDS" in got for got, _ in cut), cut
    all_ok(results)


def test_idle_connections_are_closed(runtime: RuntimeProcess) -> None:
    """200 connections that send nothing and 20 that send half a head and stop."""
    with benign(runtime.url) as results:
        started = time.monotonic()
        idle = [connect(runtime) for _ in range(200)]
        half = [connect(runtime) for _ in range(20)]
        for sock in half:
            sock.sendall(REQUEST_LINE)
        for group, limit in ((idle, KEEP_ALIVE), (half, HEAD_SECONDS)):
            for sock in group:
                sock.settimeout(max(0.1, started + limit + 1.5 - time.monotonic()))
                try:
                    got = sock.recv(65536)
                except TimeoutError:
                    got = b"still open"
                except OSError:
                    got = b""
                assert got == b"" or got.startswith(b"HTTP/1.1 408"), (group is idle, got)
                sock.close()
    all_ok(results)
    assert time.monotonic() - started < HEAD_SECONDS + 2


def test_past_the_connection_limit_requests_are_refused(tmp_path: Path) -> None:
    with running(tmp_path, {"HOTSWAP_MAX_CONNECTIONS": "20"}, ready=False) as rt:
        idle = [connect(rt) for _ in range(19)]
        try:
            answer_503 = rt.get("/v2/health/live")
            assert answer_503.status_code == 503, answer_503.text
            idle.append(connect(rt))
            with connect(rt) as sock:  # the 21st
                with contextlib.suppress(OSError):
                    sock.sendall(REQUEST_LINE + b"\r\n")
                assert answer(sock) == b"", "a connection past the limit is closed unanswered"
        finally:
            for sock in idle:
                sock.close()
        wait_for(lambda: rt.get("/v2/health/live").status_code == 200, 10, "served again")
