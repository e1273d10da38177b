"""Byte ranges over HTTP (``Range: bytes=a-b``), for the local servers of the benchmarks
(bench/large.py) and the fetch tests (tests/fixtures_runtime/hostile_http.py)."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler


def send_range_head(h: BaseHTTPRequestHandler, size: int, honour: bool = True) -> tuple[int, int]:
    """The head of an answer with ``Accept-Ranges: bytes`` for a ``size``-byte body: 206
    for ``Range: bytes=a-b`` (200 without one, or with ``honour=False``); returns the
    ``(start, end)`` of the body to send."""
    wanted = h.headers.get("Range")
    start, end = 0, size
    if wanted and honour:
        first, _, last = wanted.removeprefix("bytes=").partition("-")
        start, end = int(first), int(last) + 1
        h.send_response(206)
        h.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
    else:
        h.send_response(200)
    h.send_header("Accept-Ranges", "bytes")
    h.send_header("Content-Length", str(end - start))
    h.end_headers()
    return start, end
