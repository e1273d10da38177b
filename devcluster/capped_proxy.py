"""A TCP proxy on loopback capped at a fixed bandwidth, for the benchmarks: it puts an
emulator (fake-gcs-server, Azurite) behind the same cap as ``CappedStore``, so a swap
from gs:// or az:// is measured against the same network as one from http(s)://. Every
connection's answer bytes draw from ONE token bucket (``mib_s`` MiB/s in all).

    with CappedProxy(("127.0.0.1", emulator_port), mib_s=200) as proxy:
        endpoint = f"http://127.0.0.1:{proxy.port}"
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

from devcluster.capped_store import CHUNK_BYTES, TokenBucket


class CappedProxy:
    def __init__(self, upstream: tuple[str, int], mib_s: float) -> None:
        self.upstream = upstream
        self.bucket = TokenBucket(mib_s * 2**20)
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port: int = self.listener.getsockname()[1]
        self.stopped = threading.Event()

    def __enter__(self) -> CappedProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stopped.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=_pump, args=(client, server, None), daemon=True).start()
            threading.Thread(target=_pump, args=(server, client, self.bucket), daemon=True).start()


def _pump(source: socket.socket, target: socket.socket, bucket: TokenBucket | None) -> None:
    try:
        while chunk := source.recv(CHUNK_BYTES):
            if bucket is not None:
                bucket.take(len(chunk))
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
