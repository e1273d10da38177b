"""Peer transfer between real stores: each store has its own cache folder and its own
peer port (a real PeerServer on a loopback address of its own, as pods have IPs of their
own), and the checkpoint lies behind a real HTTP server that counts its GETs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from hotswap_contract.wire import Checkpoint, Peer, Peers
from hotswap_runtime.checkpoint.fetch.stream import FILES_IN_FLIGHT
from hotswap_runtime.checkpoint.peers.client import (
    BUSY,
    Holdings,
    PeerAddress,
    PeerBusy,
    Unreachable,
    holdings,
    open_blob,
)
from hotswap_runtime.checkpoint.peers.peering import Peering
from hotswap_runtime.checkpoint.peers.server import PeerLimits, PeerServer
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.errors import FetchError
from tests.fixtures_runtime.http import FileServer, serve

TOKEN = "peer-token-of-this-deployment"
SHARDS = 6
SHARD_BYTES = 3 << 20


def free_port() -> int:
    """A port free on the loopback addresses the peers use (127.0.0.2 ... .9)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        return int(sock.getsockname()[1])


def ip(n: int) -> str:
    return f"127.0.0.{n + 2}"


def write_checkpoint(
    files: FileServer, tag: str, same: int = 0
) -> tuple[Checkpoint, dict[str, bytes]]:
    """A manifest and SHARDS shards served by ``files``; the first ``same`` shards have the
    same bytes whatever ``tag`` (a fine-tune that changed the others)."""
    root = files.root
    shards: dict[str, dict[str, object]] = {}
    blobs: dict[str, bytes] = {}
    for i in range(SHARDS):
        seed = f"base-{i}" if i < same else f"{tag}-{i}"
        data = hashlib.sha256(seed.encode()).digest() * (SHARD_BYTES // 32)
        name = f"{tag}-{i}.safetensors"
        (root / name).write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        shards[name] = {"sha256": sha, "size": len(data)}
        blobs[sha] = data
    weight_map = {f"t{i}": name for i, name in enumerate(shards)}
    raw = json.dumps({"weight_map": weight_map, "shards": shards}).encode()
    (root / f"{tag}.safetensors.index.json").write_bytes(raw)
    sha = hashlib.sha256(raw).hexdigest()
    return Checkpoint(uri=f"{files.url}/{tag}.safetensors.index.json", sha256=sha), blobs


class Fleet:
    """``n`` pods: a store with peering and a peer server each; pod i at ip(i)."""

    def __init__(self, tmp: Path, files: FileServer, n: int, origins: int) -> None:
        self.port = free_port()
        self.files = files
        self.roster = Peers(
            name="m",
            generation=1,
            originConcurrency=origins,
            peers=tuple(Peer(name=f"pod-{i}", ip=ip(i)) for i in range(n)),
        )
        self.stores: list[CheckpointStore] = []
        self.servers: list[PeerServer] = []
        for i in range(n):
            self.add(tmp / f"cache-{i}", f"pod-{i}", ip(i))

    def add(self, cache: Path, name: str, address: str, **limits: object) -> PeerServer:
        peering = Peering(
            name, lambda: self.roster, TOKEN, self.port, idle_seconds=2.0, wait_seconds=30.0
        )
        store = CheckpointStore(
            cache, 1 << 30, 1 << 30, allowed_networks=("127.0.0.1/32",), peering=peering
        )
        server = PeerServer(cache, TOKEN, address, self.port, PeerLimits(**limits))  # type: ignore[arg-type]
        server.start()
        self.stores.append(store)
        self.servers.append(server)
        return server

    def fetch_all(self, checkpoint: Checkpoint, which: list[int] | None = None) -> None:
        """Every pod (or those in ``which``) fetches at once, each on its own thread."""
        failures: list[BaseException] = []

        def one(store: CheckpointStore) -> None:
            try:
                store.fetch_checkpoint(checkpoint)
            except BaseException as exc:
                failures.append(exc)

        chosen = [self.stores[i] for i in (which if which is not None else range(len(self.stores)))]
        threads = [threading.Thread(target=one, args=(s,)) for s in chosen]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not failures, failures

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        for store in self.stores:
            store.close()


@contextmanager
def fleet(tmp_path: Path, n: int, origins: int) -> Iterator[tuple[Fleet, FileServer]]:
    root = tmp_path / "store"
    root.mkdir()
    with serve(root) as files:
        made = Fleet(tmp_path, files, n, origins)
        try:
            yield made, files
        finally:
            made.close()


def store_gets(files: FileServer) -> int:
    return sum(files.gets.values())


def assert_verified(store: CheckpointStore, blobs: dict[str, bytes]) -> None:
    for sha, data in blobs.items():
        assert (store.cache_dir / sha).read_bytes() == data


@pytest.mark.parametrize("origins", [1, 2])
def test_each_file_leaves_the_store_once_whatever_the_fleet(tmp_path: Path, origins: int) -> None:
    with fleet(tmp_path, 5, origins) as (pods, files):
        checkpoint, blobs = write_checkpoint(files, "v1")
        pods.fetch_all(checkpoint)
        assert set(files.gets.values()) == {1}, files.gets  # every file, once
        assert len(files.gets) == SHARDS + 1
        total = sum(len(b) for b in blobs.values())
        figures = [s.last_fetched for s in pods.stores]
        assert all(f is not None for f in figures)
        store_read = sum(f.store_bytes for f in figures if f)
        assert total < store_read < total + 4096  # the shards once, and the manifest
        for store, f in zip(pods.stores, figures, strict=True):
            assert_verified(store, blobs)
            assert f is not None and f.peer_failures == 0
        readers = [i for i, f in enumerate(figures) if f and f.store_bytes > 0]
        assert readers and set(readers) <= set(range(origins))  # only origins read the store
        assert all(f and f.peer_bytes >= total for f in figures[origins:])


def test_a_delta_rollout_moves_only_the_changed_shards(tmp_path: Path) -> None:
    with fleet(tmp_path, 3, 1) as (pods, files):
        first, _ = write_checkpoint(files, "v1", same=4)
        pods.fetch_all(first)
        files.gets.clear()
        second, blobs = write_checkpoint(files, "v2", same=4)
        pods.fetch_all(second)
        assert len(files.gets) == 2 + 1  # the two changed shards and the new manifest
        changed = 2 * SHARD_BYTES
        for store in pods.stores:
            figures = store.last_fetched
            assert figures is not None and figures.cached_bytes == 4 * SHARD_BYTES
            assert figures.store_bytes + figures.peer_bytes < changed + 4096
            assert_verified(store, blobs)


def test_a_peer_serving_wrong_bytes_costs_one_retry_and_no_wrong_weights(tmp_path: Path) -> None:
    with fleet(tmp_path, 2, 1) as (pods, files):
        checkpoint, blobs = write_checkpoint(files, "v1")
        pods.fetch_all(checkpoint, [0])  # the origin holds every file
        liar = tmp_path / "liar"
        liar.mkdir()
        for sha, data in blobs.items():  # every shard's name, other bytes
            (liar / sha).write_bytes(bytes(reversed(data)))
        pods.add(liar, "liar", ip(5))
        pods.roster = pods.roster.model_copy(
            update={"peers": (*pods.roster.peers, Peer(name="liar", ip=ip(5)))}
        )
        victim = tmp_path / "victim"
        pods.add(victim, "victim", ip(6))
        pods.roster = pods.roster.model_copy(
            update={"peers": (*pods.roster.peers, Peer(name="victim", ip=ip(6)))}
        )
        files.gets.clear()
        pods.fetch_all(checkpoint, [3])
        figures = pods.stores[3].last_fetched
        assert figures is not None
        # dropped after its first wrong file: only the files already asked of it at
        # that moment (FILES_IN_FLIGHT at once) cost a retry, each one retry
        assert 1 <= figures.peer_failures <= FILES_IN_FLIGHT
        assert not files.gets  # the bytes came from the honest peer
        assert_verified(pods.stores[3], blobs)


def test_a_stalled_peer_is_dropped_and_a_vanished_one_skipped(tmp_path: Path) -> None:
    with fleet(tmp_path, 1, 1) as (pods, files):
        checkpoint, blobs = write_checkpoint(files, "v1")
        pods.fetch_all(checkpoint)
        slow = tmp_path / "slow"
        slow.mkdir()
        for sha, data in blobs.items():
            (slow / sha).write_bytes(data)
        pods.add(slow, "slow", ip(3), max_bytes_per_second=1)  # one byte a second: stalls
        gone = Peer(name="gone", ip=ip(7))  # listed, nobody listening there
        pods.add(tmp_path / "late", "late", ip(4))
        pods.roster = pods.roster.model_copy(
            update={
                "peers": (
                    *pods.roster.peers,
                    Peer(name="slow", ip=ip(3)),
                    gone,
                    Peer(name="late", ip=ip(4)),
                )
            }
        )
        files.gets.clear()
        pods.fetch_all(checkpoint, [2])
        figures = pods.stores[2].last_fetched
        assert figures is not None and 1 <= figures.peer_failures <= FILES_IN_FLIGHT
        assert not files.gets
        assert_verified(pods.stores[2], blobs)


@contextmanager
def resetting_peer(address: str, port: int, blobs: dict[str, bytes]) -> Iterator[list[str]]:
    """A peer that lists every blob and answers each blob request with its head and half
    its bytes, then resets the connection (SO_LINGER 0: an RST, not a FIN); the paths
    asked of it."""
    asked: list[str] = []
    listener = socket.create_server((address, port))
    listener.settimeout(0.2)
    stopped = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 8192:
                got = conn.recv(4096)
                if not got:  # the client went away before its head ended
                    return
                head += got
            path = head.split(b" ", 2)[1].decode() if head.count(b" ") >= 2 else ""
            asked.append(path)
            if path == "/v1/have":
                body = json.dumps({"have": sorted(blobs), "fetching": []}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                return
            data = blobs.get(path.rsplit("/", 1)[-1], b"")
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data))
            conn.sendall(data[: len(data) // 2])
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def accept() -> None:
        while not stopped.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield asked
    finally:
        stopped.set()
        thread.join(5)
        listener.close()


def test_a_peer_that_resets_mid_file_costs_one_retry_and_no_wrong_weights(
    tmp_path: Path,
) -> None:
    with fleet(tmp_path, 1, 1) as (pods, files):
        checkpoint, blobs = write_checkpoint(files, "v1")
        pods.fetch_all(checkpoint)  # the origin holds every file
        with resetting_peer(ip(5), pods.port, blobs) as asked:
            victim = tmp_path / "victim"
            pods.add(victim, "victim", ip(6))
            pods.roster = pods.roster.model_copy(
                update={
                    "peers": (
                        *pods.roster.peers,
                        Peer(name="resetter", ip=ip(5)),
                        Peer(name="victim", ip=ip(6)),
                    )
                }
            )
            files.gets.clear()
            pods.fetch_all(checkpoint, [1])
        figures = pods.stores[1].last_fetched
        assert figures is not None
        blob_requests = [p for p in asked if p.startswith("/v1/blobs/")]
        # asked first (a holder that is not an origin), reset, dropped: only the files
        # asked of it before the first reset came back (FILES_IN_FLIGHT) cost a retry
        assert 1 <= len(blob_requests) <= FILES_IN_FLIGHT
        assert figures.peer_failures == len(blob_requests)
        assert not files.gets  # the bytes came from the origin
        assert_verified(pods.stores[1], blobs)


def test_with_no_origin_answering_a_pod_reads_the_store(tmp_path: Path) -> None:
    with fleet(tmp_path, 2, 1) as (pods, files):
        checkpoint, blobs = write_checkpoint(files, "v1")
        pods.servers[0].stop()  # the origin is gone
        pods.fetch_all(checkpoint, [1])
        figures = pods.stores[1].last_fetched
        assert figures is not None and figures.peer_bytes == 0
        assert figures.store_bytes > sum(len(b) for b in blobs.values())  # and the manifest
        assert len(files.gets) == SHARDS + 1
        assert_verified(pods.stores[1], blobs)


def test_the_peer_port_answers_only_the_credential_and_only_verified_files(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    data = os.urandom(1000)
    sha = hashlib.sha256(data).hexdigest()
    (cache / sha).write_bytes(data)
    partial = "b" * 64
    (cache / f".tmp-{partial}-0123").write_bytes(b"half")
    server = PeerServer(cache, TOKEN, "127.0.0.1", 0)
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    good = {"Authorization": f"Bearer {TOKEN}"}
    try:
        assert httpx.get(f"{base}/v1/blobs/{sha}").status_code == 401
        wrong = {"Authorization": "Bearer another-deployments-token"}
        assert httpx.get(f"{base}/v1/blobs/{sha}", headers=wrong).status_code == 401
        answer = httpx.get(f"{base}/v1/blobs/{sha}", headers=good)
        assert answer.status_code == 200 and answer.content == data
        assert httpx.get(f"{base}/v1/blobs/{partial}", headers=good).status_code == 404
        assert httpx.get(f"{base}/v1/blobs/../{sha}", headers=good).status_code == 404
        listing = httpx.get(f"{base}/v1/have", headers=good).json()
        assert listing == {"have": [sha], "fetching": [partial]}
        assert httpx.post(f"{base}/v1/have", headers=good).status_code == 405
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET /v1/have HTTP/1.1\r\nX: " + b"a" * 20000)
            assert sock.recv(100) == b""  # a head over 8 KiB: closed, nothing answered
    finally:
        server.stop()


def test_a_request_past_the_upload_bound_waits_its_turn_then_is_told_busy(
    tmp_path: Path,
) -> None:
    """With its one upload taken (a client that reads nothing holds it), a peer keeps the
    next blob request waiting (a quarter of its idle bound: 0.5 s here), answers it 503
    when the upload does not end in that time, and serves a waiting one as soon as it
    ends."""
    cache = tmp_path / "cache"
    cache.mkdir()
    big, small = "c" * 64, "d" * 64
    (cache / big).write_bytes(bytes(48 << 20))  # more than the socket buffers hold
    (cache / small).write_bytes(b"small file")
    limits = PeerLimits(max_uploads=1, idle_seconds=2.0)
    server = PeerServer(cache, TOKEN, "127.0.0.1", 0, limits)
    server.start()
    url = f"http://127.0.0.1:{server.port}/v1/blobs/{small}"
    good = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as hog:
            head = f"GET /v1/blobs/{big} HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer {TOKEN}"
            hog.sendall(head.encode() + b"\r\n\r\n")
            assert hog.recv(12) == b"HTTP/1.1 200"  # its upload began, and stalls
            began = time.monotonic()
            assert httpx.get(url, headers=good).status_code == 503
            assert 0.4 < time.monotonic() - began < 1.5
            with ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(httpx.get, url, headers=good)
                time.sleep(0.2)
                hog.close()  # the upload ends: the waiting request is served
                answer = waiting.result(5)
        assert answer.status_code == 200 and answer.content == b"small file"
    finally:
        server.stop()


def test_a_peer_at_its_connection_bound_is_busy_not_gone(tmp_path: Path) -> None:
    """Past max_connections the peer answers 503 unread: a client lists it as BUSY (alive,
    so an origin is not given up for the store) and skips it for a file, dropping
    nothing; only a refused connection means that nothing listens."""
    cache = tmp_path / "cache"
    cache.mkdir()
    server = PeerServer(cache, TOKEN, "127.0.0.1", 0, PeerLimits(max_connections=1))
    server.start()
    peer = PeerAddress("busy", "127.0.0.1", server.port)
    gone = PeerAddress("gone", "127.0.0.1", free_port())

    async def ask() -> tuple[Holdings, str, str]:
        with socket.create_connection(("127.0.0.1", server.port)):  # holds the one slot
            listed = await wait_until_busy(peer)
            with pytest.raises(PeerBusy) as blob:
                async with open_blob(peer, "a" * 64, TOKEN, 2.0):
                    pass
        with pytest.raises(Unreachable) as refused:
            await holdings(gone, TOKEN, 2.0)
        return listed, str(blob.value), str(refused.value)

    try:
        listed, blob, refused = asyncio.run(ask())
    finally:
        server.stop()
    assert listed is BUSY
    assert "did not answer" in blob or "busy" in blob
    assert "did not answer" in refused


async def wait_until_busy(peer: PeerAddress) -> Holdings:
    """The listing once the held connection counts (the server counts it when its
    handler starts: a poll of the peer, as a client would make)."""
    for _ in range(100):
        listed = await holdings(peer, TOKEN, 2.0)
        if listed.busy:
            return listed
        await asyncio.sleep(0.02)
    raise AssertionError("the peer never reached its connection bound")


ANSWERS = {
    "whole": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    "short": b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10,
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "garbage": b"SSH-2.0-OpenSSH\r\n\r\n",
}


def test_the_blob_client_takes_only_a_whole_answer_of_its_declared_length() -> None:
    """open_blob's own checks, against a peer that answers as told: a body that ends
    before its Content-Length (the peer closed mid-file) fails as that peer's fault once
    its answer began (Unreachable: dropped); an answer without a Content-Length is
    refused before any byte is taken; a head that is not HTTP means a peer not ready to
    answer (busy: ask another); a whole answer arrives as sent."""

    async def run() -> dict[str, object]:
        told: dict[str, bytes] = {}

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(told["answer"])
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        peer = PeerAddress("told", "127.0.0.1", server.sockets[0].getsockname()[1])
        outcomes: dict[str, object] = {}
        async with server:
            for kind, raw in ANSWERS.items():
                told["answer"] = raw
                try:
                    async with open_blob(peer, "a" * 64, TOKEN, 2.0) as body:
                        data = b"".join([bytes(c) async for c in body.chunks])
                    outcomes[kind] = (body.size, data)
                except FetchError as exc:
                    outcomes[kind] = type(exc)
        return outcomes

    outcomes = asyncio.run(run())
    assert outcomes["whole"] == (5, b"hello")
    assert outcomes["short"] is Unreachable
    assert outcomes["chunked"] is FetchError
    assert outcomes["garbage"] is PeerBusy
