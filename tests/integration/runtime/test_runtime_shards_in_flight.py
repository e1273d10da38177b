"""Shards of a manifest downloaded two at a time from a real HTTP server on loopback: the
next shard's request goes out while the one before is still arriving, shards finish in
any order and still stream into their places, a bad shard fails the fetch with its own
reason while another is in flight, and a newer revision stops both within a poll."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import torch

from devcluster import checkpoints as ck
from devcluster import tiny
from hotswap_contract.wire import Checkpoint
from hotswap_runtime.checkpoint.layouts import Expected, layout_of
from hotswap_runtime.checkpoint.staging import Staging
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.checkpoint.streaming import StreamParser
from hotswap_runtime.errors import IntegrityError, Superseded
from tests.fixtures_runtime import hostile_http as hostile

TINY = Expected(layout_of(tiny.weights(1)), tiny.ARCHITECTURE)
Route = hostile.Route


@pytest.fixture
def web() -> Iterator[hostile.Hostile]:
    with hostile.serve() as server:
        yield server


def make_store(tmp_path: Path, idle: float) -> CheckpointStore:
    return CheckpointStore(
        tmp_path / "cache",
        10**9,
        10**8,
        file_roots=(),
        allowed_networks=("127.0.0.1/32",),
        idle_seconds=idle,
    )


class Served:
    """A three-shard checkpoint of ``tiny.weights(seed)`` on ``web``: each shard answered
    by the route a test gives it, or whole."""

    def __init__(self, web: hostile.Hostile, folder: Path, seed: int = 1) -> None:
        self.web = web
        self.manifest, self.sha = ck.save_sharded(tiny.weights(seed), folder, 3)
        self.names = list(json.loads(self.manifest.read_text())["shards"])
        self.data = [(folder / name).read_bytes() for name in self.names]
        self.shas = [ck.sha256_of(folder / name) for name in self.names]

    def uri(self, index: int) -> str:
        return f"{self.web.url}/m/{self.names[index]}"

    def checkpoint(self, routes: dict[int, Route]) -> Checkpoint:
        for index, name in enumerate(self.names):
            self.web.route(f"/m/{name}", routes.get(index, hostile.whole(self.data[index])))
        uri = self.web.route(f"/m/{self.manifest.name}", hostile.whole(self.manifest.read_bytes()))
        return Checkpoint(uri=uri, sha256=self.sha)


def _wait(event: threading.Event, release: threading.Event) -> None:
    """Until ``event`` holds or the server stops."""
    while not event.wait(0.05) and not release.is_set():
        pass


def after(condition: Callable[[], bool], data: bytes, release: threading.Event) -> Route:
    """Nothing (not even a status line) until ``condition()`` holds; then all of ``data``."""

    def route(h: BaseHTTPRequestHandler) -> None:
        while not condition() and not release.wait(0.02):
            pass
        hostile.whole(data)(h)

    return route


def half_then(
    data: bytes, sent: threading.Event, resume: threading.Event, release: threading.Event
) -> Route:
    """Headers and half of ``data``, ``sent`` set, then nothing until ``resume`` holds
    (or the server stops), then the rest."""

    def route(h: BaseHTTPRequestHandler) -> None:
        hostile.send_head(h, len(data))
        h.wfile.write(data[: len(data) // 2])
        h.wfile.flush()
        sent.set()
        _wait(resume, release)
        try:
            h.wfile.write(data[len(data) // 2 :])
        except OSError:
            return

    return route


def leftovers(store: CheckpointStore) -> set[str]:
    return {p.name for p in store.cache_dir.iterdir()}


def test_the_next_shard_downloads_while_the_one_before_is_in_flight(
    tmp_path: Path, web: hostile.Hostile
) -> None:
    """Shard 0's answer waits until shard 1 is in the cache (downloaded, verified,
    renamed), so shard 1 is declared, arrives and is verified first: it streams into its
    own place all the same. One shard at a time, shard 0 would wait for a request that
    never comes (until its idle bound)."""
    served = Served(web, tmp_path / "src", seed=3)
    second = tmp_path / "cache" / served.shas[1]
    checkpoint = served.checkpoint({0: after(second.exists, served.data[0], web.release)})
    store = make_store(tmp_path, idle=5)
    parser = StreamParser(TINY, Staging(pin=False))
    try:
        local = store.fetch_checkpoint(checkpoint, parser=parser)
    finally:
        store.close()
    assert [path.read_bytes() for path, _ in local.files] == served.data
    assert [where for _, where in local.files] == [served.uri(i) for i in range(3)]
    result = parser.result(len(local.files))
    assert result is not None, "out-of-order shards did not stream"
    _, _, views = result
    assert all(torch.equal(views[k], v) for k, v in tiny.weights(3).items())


def test_a_bad_shard_fails_the_fetch_while_another_is_in_flight(
    tmp_path: Path, web: hostile.Hostile
) -> None:
    """Shard 1's bytes do not match its sha256 while shard 0 is stalled mid-body: the
    fetch fails at once with shard 1's own reason, shard 0's download is stopped, and
    nothing of either is left in the cache."""
    served = Served(web, tmp_path / "src")
    sent = threading.Event()
    bad = bytes(len(served.data[1]))
    checkpoint = served.checkpoint(
        {
            0: half_then(served.data[0], sent, threading.Event(), web.release),
            1: hostile.whole(bad),
        }
    )
    store = make_store(tmp_path, idle=3)  # one shard at a time: shard 0 stalls for 3 s
    started = time.monotonic()
    try:
        with pytest.raises(IntegrityError) as error:
            store.fetch_checkpoint(checkpoint, parser=StreamParser(TINY, Staging(pin=False)))
    finally:
        store.close()
    elapsed = time.monotonic() - started
    assert str(error.value) == (
        f"checkpoint {served.uri(1)}: content does not match spec.checkpoint.sha256 "
        f"({served.shas[1]}); the file changed, or the sha256 in the spec is wrong"
    )
    assert sent.is_set() and elapsed < 2.5, f"shard 0 was not stopped ({elapsed:.2f} s)"
    assert leftovers(store) == {served.sha}, "a temp file or an unverified shard was left"


def test_a_newer_revision_stops_two_shards_in_flight_within_a_poll(
    tmp_path: Path, web: hostile.Hostile
) -> None:
    served = Served(web, tmp_path / "src")
    sent = [threading.Event(), threading.Event()]
    never = threading.Event()
    checkpoint = served.checkpoint(
        {i: half_then(served.data[i], sent[i], never, web.release) for i in (0, 1)}
    )
    store = make_store(tmp_path, idle=60)  # only the cancel ends these downloads in time
    wanted = threading.Event()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(store.fetch_checkpoint, checkpoint, wanted.is_set)
            for index, event in enumerate(sent):
                assert event.wait(10), f"shard {index} was never in flight"
            cancelled_at = time.monotonic()
            wanted.set()
            error = future.exception(timeout=10)
            latency = time.monotonic() - cancelled_at
    finally:
        store.close()
    assert isinstance(error, Superseded), error
    assert latency < 1.0, f"cancel took {latency:.3f} s"
    assert leftovers(store) == {served.sha}
