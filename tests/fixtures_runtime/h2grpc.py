"""A raw HTTP/2 gRPC client (the ``h2`` package over a socket) for what no gRPC library
sends: a message announced larger than what follows, a stream half-closed inside a
message, bytes pushed as fast as the server's flow-control windows let them in.

``RawCall`` opens one connection and one stream on it, sends the gRPC length prefix and
whatever part of the message the test chooses, and reads the server's frames: how many
bytes the server let in (its windows), and the call's ``grpc-status`` and
``grpc-message`` once it answers.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def frame(message: bytes) -> bytes:
    """``message`` with gRPC's 5-byte prefix (not compressed, its length)."""
    return struct.pack(">BI", 0, len(message)) + message


@dataclass
class RawCall:
    """One stream on its own HTTP/2 connection to ``target`` (host:port)."""

    target: str
    path: str = MODEL_INFER
    sent: int = 0  # bytes of DATA the server accepted
    status: int | None = None  # grpc-status, once the server answered
    message: str = ""  # grpc-message
    reset: bool = False  # the server reset the stream or closed the connection
    headers: dict[str, str] = field(default_factory=dict)
    settings: dict[int, int] = field(default_factory=dict)  # the server's SETTINGS

    def __post_init__(self) -> None:
        host, port = self.target.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        self.stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            self.stream,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", self.path),
                (":authority", self.target),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        self._flush()

    def send(self, data: bytes, timeout: float, end: bool = False) -> int:
        """Send ``data`` as far as the server's windows let it in within ``timeout``
        seconds (waiting for WINDOW_UPDATEs); half-close after it when ``end`` and all
        of it went. The bytes sent."""
        view = memoryview(data)
        done = 0
        deadline = time.monotonic() + timeout
        while done < len(view) and not self.closed():
            room = min(
                self.conn.local_flow_control_window(self.stream),
                self.conn.max_outbound_frame_size,
                len(view) - done,
            )
            if room > 0:
                self.conn.send_data(self.stream, view[done : done + room].tobytes())
                done += room
                self._flush()
                continue
            if not self.read(deadline - time.monotonic()):
                break
        self.sent += done
        if end and done == len(view) and not self.closed():
            self.conn.end_stream(self.stream)
            self._flush()
        return done

    def half_close(self) -> None:
        self.conn.end_stream(self.stream)
        self._flush()

    def wait_answer(self, timeout: float) -> int | None:
        """The call's grpc-status once the server answers within ``timeout``, else None."""
        deadline = time.monotonic() + timeout
        while not self.closed() and self.read(deadline - time.monotonic()):
            pass
        return self.status

    def closed(self) -> bool:
        return self.status is not None or self.reset

    def read(self, timeout: float) -> bool:
        """Read and handle what the server sent within ``timeout``; False when nothing
        came (or the connection closed)."""
        if timeout <= 0:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            return False
        except OSError:
            self.reset = True
            return False
        if not data:
            self.reset = True
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.reset = True
            return False
        for event in events:
            self._handle(event)
        self._flush()
        return True

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            headers = dict(event.headers or [])
            self.headers.update(headers)
            if "grpc-status" in headers:
                self.status = int(headers["grpc-status"])
                self.message = headers.get("grpc-message", "")
        elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
            self.reset = True
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings.update({k: v.new_value for k, v in event.changed_settings.items()})
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            try:
                self.sock.sendall(data)
            except OSError:
                self.reset = True

    def close(self) -> None:
        self.sock.close()
