"""Cluster DNS for the real node: `<service>.<namespace>.svc.cluster.local` -> ClusterIP.

Pods on a real cluster resolve Service names (kopf's in-cluster login connects to
`https://kubernetes.default.svc`). This is the smallest server that does that, over UDP,
for A queries, answering from the API server (each name looked up when asked, kept
5 s); other names under cluster.local are NXDOMAIN, and names outside it are resolved
by this machine's resolver (nothing but the package registries is reachable anyway).

    python -m devcluster.clusterdns ADDRESS KUBECONFIG   # listens on ADDRESS:53
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from pathlib import Path

from devcluster.rest import ApiError, KubeClient

DOMAIN = "svc.cluster.local"
TTL = 5
A, AAAA, IN = 1, 28, 1
NOERROR, SERVFAIL, NXDOMAIN, NOTIMP = 0, 2, 3, 4


def parse_question(packet: bytes) -> tuple[int, int, str, int, int]:
    """(id, flags, name, qtype, end offset of the question) of a query."""
    ident, flags, qdcount = struct.unpack("!HHH", packet[:6])
    if qdcount != 1:
        raise ValueError("one question per query")
    labels, pos = [], 12
    while packet[pos]:
        length = packet[pos]
        if length & 0xC0:
            raise ValueError("compressed names in a question")
        labels.append(packet[pos + 1 : pos + 1 + length].decode("ascii"))
        pos += 1 + length
    qtype, _qclass = struct.unpack("!HH", packet[pos + 1 : pos + 5])
    return ident, flags, ".".join(labels).lower(), qtype, pos + 5


def answer(query: bytes, rcode: int, addresses: list[str]) -> bytes:
    """The response to `query`: its question, then one A record per address."""
    ident, flags, _, _, end = parse_question(query)
    header = struct.pack(
        "!HHHHHH", ident, 0x8000 | (flags & 0x0100) | 0x0080 | rcode, 1, len(addresses), 0, 0
    )
    records = b"".join(
        struct.pack("!HHHIH", 0xC00C, A, IN, TTL, 4) + socket.inet_aton(ip) for ip in addresses
    )
    return header + query[12:end] + records


class Resolver:
    """Service names from the API server, everything else from this machine."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self._cache: dict[str, tuple[float, int, list[str]]] = {}

    def resolve(self, name: str) -> tuple[int, list[str]]:
        cached = self._cache.get(name)
        if cached and cached[0] > time.monotonic():
            return cached[1], cached[2]
        rcode, addresses = self._lookup(name)
        self._cache[name] = (time.monotonic() + TTL, rcode, addresses)
        return rcode, addresses

    def _lookup(self, name: str) -> tuple[int, list[str]]:
        if name.endswith(f".{DOMAIN}"):
            parts = name[: -len(DOMAIN) - 1].split(".")
            if len(parts) != 2:
                return NXDOMAIN, []
            service, namespace = parts
            try:
                svc = self.client.get(f"/api/v1/namespaces/{namespace}/services/{service}")
            except ApiError as err:
                return (NXDOMAIN, []) if err.status == 404 else (SERVFAIL, [])
            ip = svc.get("spec", {}).get("clusterIP")
            return (NOERROR, [ip]) if ip and ip != "None" else (NXDOMAIN, [])
        if name == "cluster.local" or name.endswith(".cluster.local"):
            return NXDOMAIN, []
        try:
            infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            return NXDOMAIN, []
        return NOERROR, sorted({str(info[4][0]) for info in infos})


def serve(address: str, kubeconfig: Path, port: int = 53) -> None:
    resolver = Resolver(KubeClient(kubeconfig))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((address, port))
        print(f"cluster DNS on {address}:{port}", flush=True)
        while True:
            query, peer = sock.recvfrom(4096)
            try:
                _, _, name, qtype, _ = parse_question(query)
            except (ValueError, IndexError, struct.error, UnicodeDecodeError):
                continue
            addresses: list[str] = []
            rcode = NOTIMP
            if qtype in (A, AAAA):
                rcode, addresses = resolver.resolve(name)
            if qtype == AAAA:  # IPv4 only: the name exists, without an IPv6 address
                addresses = []
            sock.sendto(answer(query, rcode, addresses), peer)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m devcluster.clusterdns ADDRESS KUBECONFIG", file=sys.stderr)
        return 2
    serve(args[0], Path(args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
