"""A checkpoint store capped at a fixed bandwidth, for the benchmarks (bench/large.py,
bench/distribution.py): files under a folder over HTTP on loopback, with byte ranges
(``Accept-Ranges: bytes``, as object stores serve them), every connection drawing from
ONE token bucket, so the store sends at most ``mib_s`` MiB/s in all however many pods
read it at once. It counts the bytes it sends (``sent``): what a rollout read from the
store.

    with CappedStore(root, mib_s=100) as store:
        url = f"{store.url}/name/model.safetensors.index.json"
        ...
        read = store.sent

Also here: ``random_checkpoint``, a sharded checkpoint of random bytes (a manifest and
``.safetensors``-named shards) for benchmarks whose model load is a stand-in and that
only move, hash and cache the bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from devcluster.ranges import send_range_head

CHUNK_BYTES = 256 << 10  # what one connection sends per draw from the bucket
BACKLOG = 1024  # a rollout's pods connect at once


class TokenBucket:
    """At most ``rate`` bytes per second across every caller of ``take``, in the order
    they asked (each call reserves the next free slot of the line, then waits for it)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._next = time.perf_counter()

    def take(self, n: int) -> None:
        with self._lock:
            now = time.perf_counter()
            start = max(self._next, now)
            self._next = start + n / self.rate
        if start > now:
            time.sleep(start - now)  # the bandwidth cap itself


class CappedStore:
    """Files under ``root`` at ``http://127.0.0.1:<port>/<relative path>``, ``mib_s``
    MiB/s in all (started on enter, stopped on exit)."""

    def __init__(self, root: Path, mib_s: float, host: str = "127.0.0.1") -> None:
        self.root = root.resolve()
        self.mib_s = mib_s
        self.bucket = TokenBucket(mib_s * 2**20)
        self._sent = 0
        self._gets = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, 0), self._handler(), bind_and_activate=False)
        self._server.daemon_threads = True
        self._server.request_queue_size = BACKLOG
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def sent(self) -> int:
        """Bytes of file content sent so far."""
        with self._lock:
            return self._sent

    @property
    def gets(self) -> int:
        """GET requests answered with content so far."""
        with self._lock:
            return self._gets

    def __enter__(self) -> CappedStore:
        self._server.server_bind()
        self._server.server_activate()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _count(self, n: int, first: bool) -> None:
        with self._lock:
            self._sent += n
            self._gets += first

    def _file(self, path: str) -> Path | None:
        """The regular file below ``root`` that the request path names, or None."""
        wanted = (self.root / path.split("?")[0].lstrip("/")).resolve()
        if not wanted.is_relative_to(self.root) or not wanted.is_file():
            return None
        return wanted

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        store = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return None

            def do_GET(self) -> None:
                path = store._file(self.path)
                if path is None:
                    self.send_error(404)
                    return
                start, end = send_range_head(self, path.stat().st_size)
                store._send(self, path, start, end)

        return Handler

    def _send(self, handler: BaseHTTPRequestHandler, path: Path, start: int, end: int) -> None:
        first = True
        with path.open("rb") as f:
            f.seek(start)
            left = end - start
            while left:
                chunk = f.read(min(CHUNK_BYTES, left))
                self.bucket.take(len(chunk))
                try:
                    handler.wfile.write(chunk)
                except OSError:
                    return
                self._count(len(chunk), first)
                first = False
                left -= len(chunk)


def random_checkpoint(folder: Path, total_bytes: int, shards: int) -> tuple[Path, str]:
    """``shards`` files of random bytes (``total_bytes`` in all) named like safetensors
    shards, and their manifest ``model.safetensors.index.json`` (sha256 and size of each;
    runtime/hotswap_runtime/checkpoint/manifest.py); the manifest's path and sha256.
    Not loadable weights: for stand-in loads that only fetch and verify."""
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-total_bytes // shards)
    entries: dict[str, dict[str, object]] = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        size = max(8, min(per, total_bytes - i * per))
        digest = hashlib.sha256()
        with (folder / name).open("wb") as f:
            for offset in range(0, size, 8 << 20):
                block = os.urandom(min(8 << 20, size - offset))
                digest.update(block)
                f.write(block)
        entries[name] = {"sha256": digest.hexdigest(), "size": size}
    weight_map = {f"w{i}": name for i, name in enumerate(entries)}
    raw = json.dumps({"weight_map": weight_map, "shards": entries}).encode()
    manifest = folder / "model.safetensors.index.json"
    manifest.write_bytes(raw)
    return manifest, hashlib.sha256(raw).hexdigest()
