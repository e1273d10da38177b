"""A real HTTP file server on loopback for checkpoint fetch tests.

Serves files from a folder. Paths under ``/private/`` need ``Authorization: <token>``;
paths under ``/slow/`` trickle their bytes so a test can supersede a download. Counts
GET requests per path so a test can prove a cache hit downloaded nothing.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class FileServer:
    root: Path
    token: str
    url: str = ""
    gets: collections.Counter[str] = field(default_factory=collections.Counter)


@contextmanager
def serve(
    root: Path, token: str = "Bearer s3cret-token", host: str = "127.0.0.1"
) -> Iterator[FileServer]:
    state = FileServer(root, token)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return None

        def _target(self) -> tuple[Path | None, bool]:
            path = self.path.split("?")[0]
            if path.startswith("/private/"):
                if self.headers.get("Authorization") != state.token:
                    self.send_error(403, "missing or wrong Authorization")
                    return None, False
                path = path[len("/private") :]
            slow = path.startswith("/slow/")
            if slow:
                path = path[len("/slow") :]
            file = root / path.lstrip("/")
            if not file.is_file():
                self.send_error(404, "no such checkpoint")
                return None, False
            return file, slow

        def do_HEAD(self) -> None:
            file, _ = self._target()
            if file is not None:
                self._headers(file)

        def do_GET(self) -> None:
            state.gets[self.path] += 1
            file, slow = self._target()
            if file is None:
                return
            self._headers(file)
            data = file.read_bytes()
            step = 256 if slow else len(data) or 1
            for start in range(0, len(data), step):
                try:
                    self.wfile.write(data[start : start + step])
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return
                if slow:
                    time.sleep(0.05)  # the trickle itself, not a wait for a condition

        def _headers(self, file: Path) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(file.stat().st_size))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    state.url = f"http://{host}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
