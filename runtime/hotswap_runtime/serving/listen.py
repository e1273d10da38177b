"""Where the serving ports (REST with probes and ``/metrics``, and gRPC) listen.

``HOTSWAP_HOST`` is the pod IP in a pod (``status.podIP``): Services, probes, the
operator's ``/metrics`` scrape and other pods reach the runtime there. ``kubectl
port-forward`` reaches it another way: the container runtime connects to ``localhost``
inside the pod's network namespace (127.0.0.1, then ::1). So both serving ports listen
on 127.0.0.1 as well, unless ``HOTSWAP_LOOPBACK`` is off or ``HOTSWAP_HOST`` already
covers it (127.0.0.1 itself, ``localhost`` or 0.0.0.0). Nothing
else: not 0.0.0.0, which would also answer on a pod's other interfaces (host network, a
second network attached to the pod). Loopback is the pod's own: only its containers
reach it, and they already reach the pod IP (docs/security.md, "Listen addresses").

The peer port is not here: it stays on the pod IP only (checkpoint/peers/server.py).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

LOOPBACK = "127.0.0.1"


def listen_hosts(host: str, loopback: bool) -> tuple[str, ...]:
    """``host``, and 127.0.0.1 too when ``loopback`` and ``host`` does not cover it."""
    if not loopback or covers_loopback(host):
        return (host,)
    return (host, LOOPBACK)


def covers_loopback(host: str) -> bool:
    """Whether listening on ``host`` already answers connections to 127.0.0.1."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:  # a name: it is listened on as it resolves, loopback added
        return False
    # not another 127/8 address, nor ::1 or :: (IPv6 sockets take no IPv4 here)
    return address in (ipaddress.ip_address(LOOPBACK), ipaddress.ip_address("0.0.0.0"))


def grpc_address(host: str, port: int) -> str:
    """``host:port`` as gRPC parses it (an IPv6 address in brackets)."""
    bare = host.strip("[]")
    return f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"


def bind_sockets(hosts: Sequence[str], port: int) -> list[socket.socket]:
    """TCP sockets bound to every address of ``hosts`` at ``port``, not yet listening
    (uvicorn listens once the app has started, as it does on its own). Port 0: every
    socket gets the port the first one got. SystemExit naming the address that cannot
    be bound (taken, or not this machine's)."""
    sockets: list[socket.socket] = []
    seen: set[object] = set()
    try:
        for host in hosts:
            for family, address in _addresses(host, port):
                if address[0] in seen:
                    continue
                seen.add(address[0])
                sockets.append(_bound(family, (address[0], port, *address[2:])))
                port = sockets[-1].getsockname()[1]
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise SystemExit(f"hotswap-runtime: cannot listen on {host} port {port}: {exc}") from exc
    return sockets


def _addresses(host: str, port: int) -> list[tuple[socket.AddressFamily, tuple[object, ...]]]:
    infos = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    return [(family, tuple(address)) for family, _, _, _, address in infos]


def _bound(family: socket.AddressFamily, address: tuple[object, ...]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # as asyncio's create_server: no IPv4 on an IPv6 socket
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock
