"""A TCP relay on loopback that breaks a real server's big answers: reset or stall.

``relay(port)`` forwards every connection to ``127.0.0.1:port`` byte for byte (TLS
passes through untouched). The first ``cuts`` connections whose answer grows past
``after`` bytes are then either reset (RST: ``SO_LINGER`` 0) or stalled: nothing more
is forwarded until the relay stops. Small answers (tokens, manifests) pass, so a fault
lands in a blob's body, as a flaky network or a hung registry would put it.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field


@dataclass
class Relay:
    port: int
    after: int
    stall: bool
    cuts: int
    release: threading.Event = field(default_factory=threading.Event)
    cut: threading.Event = field(default_factory=threading.Event)  # a fault happened
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_cut(self) -> bool:
        with self.lock:
            if self.cuts <= 0:
                return False
            self.cuts -= 1
            return True


@contextmanager
def relay(port: int, after: int, stall: bool = False, cuts: int = 1) -> Iterator[Relay]:
    listener = socket.create_server(("127.0.0.1", 0))
    state = Relay(int(listener.getsockname()[1]), after, stall, cuts)
    thread = threading.Thread(target=_accept, args=(listener, port, state), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        listener.close()


def _accept(listener: socket.socket, port: int, state: Relay) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        state.connections += 1
        server = socket.create_connection(("127.0.0.1", port))
        threading.Thread(target=_pump, args=(client, server, None), daemon=True).start()
        threading.Thread(target=_pump, args=(server, client, state), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket, faults: Relay | None) -> None:
    sent = 0
    with suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
            sent += len(data)
            if faults is not None and sent > faults.after and faults.take_cut():
                _fault(sink, faults)
                break
    for sock in (source, sink):
        with suppress(OSError):
            sock.close()


def _fault(client: socket.socket, faults: Relay) -> None:
    faults.cut.set()
    if faults.stall:
        faults.release.wait()
        return
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # wake the other pump's recv (it holds the socket open, and so would hold back the
    # RST, until it returns); SHUT_RD sends nothing, the last close sends the RST
    client.shutdown(socket.SHUT_RD)
