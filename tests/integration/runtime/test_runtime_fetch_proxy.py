"""The admin's download proxy (HOTSWAP_FETCH_PROXY, chart value distribution.proxy): an
http(s):// checkpoint goes through it, as to a node's P2P daemon (Dragonfly's dfdaemon
proxies plain HTTP GETs this way), the sha256 is still checked, and the address policy
still refuses what the spec may not name."""

from __future__ import annotations

import hashlib
import http.client
import os
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from devcluster import certs
from hotswap_contract.wire import Checkpoint
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.errors import FetchError, FetchRefused, IntegrityError
from tests.fixtures_runtime.http import serve

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


@dataclass
class Proxy:
    url: str
    relayed: list[str] = field(default_factory=list)  # the absolute URIs it relayed


@contextmanager
def forward_proxy(tamper: bool = False, tls: ssl.SSLContext | None = None) -> Iterator[Proxy]:
    """A forward HTTP proxy on loopback: GET with an absolute URI, relayed to the origin
    (``tamper``: the body's first byte changed; ``tls``: the proxy itself is
    https://localhost)."""
    relayed: list[str] = []

    class Relay(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return None

        def do_GET(self) -> None:
            target = urlsplit(self.path)
            relayed.append(self.path)
            origin = http.client.HTTPConnection(target.hostname or "", target.port or 80, timeout=5)
            origin.request("GET", target.path, headers={"Host": self.headers.get("Host", "")})
            answer = origin.getresponse()
            body = answer.read()
            if tamper and body:
                body = bytes([body[0] ^ 1]) + body[1:]
            self.send_response(answer.status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            origin.close()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Relay)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    url = f"https://localhost:{port}" if tls else f"http://127.0.0.1:{port}"
    try:
        yield Proxy(url, relayed)
    finally:
        server.shutdown()
        server.server_close()


def store_with(tmp_path: Path, proxy: str) -> CheckpointStore:
    return CheckpointStore(
        tmp_path / "cache",
        10**8,
        10**8,
        allowed_networks=("127.0.0.1/32",),
        idle_seconds=2.0,
        proxy=proxy,
    )


def test_downloads_go_through_the_admins_proxy_and_are_still_verified(tmp_path: Path) -> None:
    root = tmp_path / "files"
    root.mkdir()
    (root / "m.pt").write_bytes(DATA)
    with serve(root) as files, forward_proxy() as proxy:
        store = store_with(tmp_path, proxy.url)
        try:
            path = store.fetch(Checkpoint(uri=f"{files.url}/m.pt", sha256=SHA))
        finally:
            store.close()
        assert path.read_bytes() == DATA
        assert proxy.relayed == [f"{files.url}/m.pt"]  # the proxy fetched it
        assert files.gets["/m.pt"] == 1


def test_a_proxy_that_changes_bytes_fails_the_sha256(tmp_path: Path) -> None:
    root = tmp_path / "files"
    root.mkdir()
    (root / "m.pt").write_bytes(DATA)
    with serve(root) as files, forward_proxy(tamper=True) as proxy:
        store = store_with(tmp_path, proxy.url)
        try:
            with pytest.raises(IntegrityError):
                store.fetch(Checkpoint(uri=f"{files.url}/m.pt", sha256=SHA))
        finally:
            store.close()
        assert not list((tmp_path / "cache").iterdir())


def test_the_address_policy_still_holds_through_the_proxy(tmp_path: Path) -> None:
    with forward_proxy() as proxy:
        store = store_with(tmp_path, proxy.url)
        try:
            with pytest.raises(FetchRefused):
                store.fetch(Checkpoint(uri="http://127.0.0.2:9/m.pt", sha256=SHA))
        finally:
            store.close()
        assert proxy.relayed == []  # refused before anything was sent


def test_an_https_proxy_is_trusted_by_the_pods_cas_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An https:// proxy's certificate is checked against the pod's CAs, like an
    origin's: trusted through SSL_CERT_FILE it carries the download, and a proxy whose
    certificate nothing trusts is refused before any request reaches it."""
    root = tmp_path / "files"
    root.mkdir()
    (root / "m.pt").write_bytes(DATA)
    pair = certs.self_signed(tmp_path / "proxy", "localhost", ("localhost",))
    other = certs.self_signed(tmp_path / "other", "localhost", ("localhost",))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pair.cert, pair.key)
    with serve(root) as files, forward_proxy(tls=tls) as proxy:
        monkeypatch.setenv("SSL_CERT_FILE", str(other.cert))
        store = store_with(tmp_path / "untrusted", proxy.url)
        try:
            with pytest.raises(FetchError, match="TLS verification failed"):
                store.fetch(Checkpoint(uri=f"{files.url}/m.pt", sha256=SHA))
        finally:
            store.close()
        assert proxy.relayed == []
        monkeypatch.setenv("SSL_CERT_FILE", str(pair.cert))
        store = store_with(tmp_path / "trusted", proxy.url)
        try:
            path = store.fetch(Checkpoint(uri=f"{files.url}/m.pt", sha256=SHA))
        finally:
            store.close()
        assert path.read_bytes() == DATA
        assert proxy.relayed == [f"{files.url}/m.pt"]
