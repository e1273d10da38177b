"""A TCP proxy on loopback in front of a real server, that breaks its first connection.

The first connection's response is cut after ``after`` bytes: ``fault="reset"`` closes
it with a TCP reset, ``fault="stall"`` stops forwarding and holds the connection open
until ``release`` is set (the proxy stops); later connections pass through untouched.
``cut`` is set once the fault happened. A real server behind it answers everything else,
so a resumed download really reads the rest from the server.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Faulty:
    port: int
    cut: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    connections: int = 0


@contextmanager
def serve(upstream: tuple[str, int], fault: str, after: int) -> Iterator[Faulty]:
    listener = socket.create_server(("127.0.0.1", 0))
    faulty = Faulty(listener.getsockname()[1])
    listener.settimeout(0.1)

    def accept() -> None:
        while not faulty.release.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            first = faulty.connections == 0
            faulty.connections += 1
            limit = after if first else None
            args = (client, upstream, fault, limit, faulty)
            threading.Thread(target=_relay, args=args, daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield faulty
    finally:
        faulty.release.set()
        thread.join(5)
        listener.close()


def _relay(
    client: socket.socket, upstream: tuple[str, int], fault: str, limit: int | None, f: Faulty
) -> None:
    server = socket.create_connection(upstream)
    pump = threading.Thread(target=_pump, args=(client, server), daemon=True)
    pump.start()
    sent = 0
    try:
        while chunk := server.recv(65536):
            if limit is not None and sent + len(chunk) > limit:
                client.sendall(chunk[: limit - sent])
                f.cut.set()
                if fault == "stall":
                    f.release.wait()
                else:  # SO_LINGER 0: close() sends a reset, once the pump's recv returned
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    client.shutdown(socket.SHUT_RD)
                    pump.join(5)
                break
            client.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    finally:
        client.close()
        server.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
    except OSError:
        pass
