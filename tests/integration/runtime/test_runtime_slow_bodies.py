"""Slow senders cannot hold the request memory, and readiness tells when it is spent.

Against a real runtime process with the default request memory (1 GiB) and body limit
(256 MiB): clients that declare large or small bodies and trickle them hold only what
they sent, are cut off after the grace with a logged reason (408), and benign REST and
gRPC requests running meanwhile all succeed. When the memory is spent for real (a
client allowed a very low rate keeps a claim no small request can pass), requests are
refused with 503 within the admission wait, readiness turns false on REST and gRPC,
and it turns true again as soon as the memory is free.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from hotswap_runtime.serving.grpc_v2 import inference_pb2 as pb
from tests.fixtures_runtime.server import RuntimeProcess, publish_tiny, running, wait_for

INFER = "/v2/models/tiny/infer"
GRACE = 2.0  # HOTSWAP_BODY_GRACE_SECONDS in these tests
BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
).encode()


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    root = tmp_path_factory.mktemp("slow")
    env = {"HOTSWAP_CONFIG_DIR": publish_tiny(root), "HOTSWAP_BODY_GRACE_SECONDS": str(GRACE)}
    with running(root, env) as process:
        yield process


@dataclass
class Tricklers:
    """``count`` connections that each declare ``declared`` bytes and send one byte every
    0.2 s, reconnecting when cut off, until ``stop``; what each cut-off answered."""

    url: str
    count: int
    declared: int
    answers: list[tuple[int, float]] = field(default_factory=list)  # (status, seconds)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        for _ in range(self.count):
            self._open(selector)
        while not self.stop.is_set():
            for key, _ in selector.select(0.2):
                self._answered(selector, key.fileobj)  # type: ignore[arg-type]
            for key in list(selector.get_map().values()):
                try:
                    key.fileobj.send(b" ")  # type: ignore[union-attr]
                except OSError:
                    self._answered(selector, key.fileobj)  # type: ignore[arg-type]
        for key in list(selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]

    def _open(self, selector: selectors.BaseSelector) -> None:
        host, port = self.url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)), timeout=10)
        head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {self.declared}\r\n\r\n"
        sock.sendall(head.encode())
        selector.register(sock, selectors.EVENT_READ, time.monotonic())

    def _answered(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        opened = selector.get_key(sock).data
        selector.unregister(sock)
        try:
            status = int(sock.recv(4096).split(b" ")[1])
        except (OSError, IndexError, ValueError):
            status = 0  # closed without an answer
        sock.close()
        self.answers.append((status, time.monotonic() - opened))
        if not self.stop.is_set():
            self._open(selector)


def grpc_request(samples: int = 1) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="input", datatype="FP32", shape=[samples, 4])
    request.raw_input_contents.append(np.ones((samples, 4), dtype=np.float32).tobytes())
    return request


@dataclass
class BenignLoad:
    """REST and gRPC infer requests in a loop, each with a 5 s timeout, until ``stop``."""

    url: str
    grpc_target: str
    results: list[str] = field(default_factory=list)  # "ok" or what went wrong
    stop: threading.Event = field(default_factory=threading.Event)

    def rest(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self.stop.is_set():
                try:
                    answer = client.post(INFER, content=BODY)
                    ok = answer.status_code == 200 and answer.json()["model_version"] == "1"
                    self.results.append("ok" if ok else f"REST {answer.status_code}")
                except httpx.HTTPError as exc:
                    self.results.append(f"REST {type(exc).__name__}")

    def grpc(self) -> None:
        request = grpc_request()
        with grpc.insecure_channel(self.grpc_target) as channel:
            infer = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            while not self.stop.is_set():
                try:
                    ok = infer(request, timeout=5).model_version == "1"
                    self.results.append("ok" if ok else "gRPC wrong version")
                except grpc.RpcError as exc:
                    self.results.append(f"gRPC {exc.code().name}")  # type: ignore[attr-defined]


def attack(
    runtime: RuntimeProcess, count: int, declared: int, seconds: float
) -> tuple[Tricklers, BenignLoad]:
    """Tricklers and benign load together until every trickler was cut off twice (it
    reconnects each time), at most ``seconds``; (tricklers, benign)."""
    tricklers = Tricklers(runtime.url, count, declared)
    load = BenignLoad(runtime.url, runtime.grpc_target)
    threads = [threading.Thread(target=tricklers.run)]
    threads += [threading.Thread(target=load.rest) for _ in range(2)]
    threads += [threading.Thread(target=load.grpc)]
    for thread in threads:
        thread.start()
    try:  # check() says what went wrong: benign requests first, then the cut-offs
        with contextlib.suppress(AssertionError):
            wait_for(lambda: len(tricklers.answers) >= 2 * count, seconds, "cut-offs")
    finally:
        load.stop.set()
        tricklers.stop.set()
        for thread in threads:
            thread.join(30)
    return tricklers, load


def check(runtime: RuntimeProcess, tricklers: Tricklers, load: BenignLoad, count: int) -> None:
    failed = [r for r in load.results if r != "ok"]
    assert load.results and not failed, f"{len(failed)} of {len(load.results)} failed: {failed}"
    assert len(tricklers.answers) >= 2 * count, f"slow senders not cut off: {tricklers.answers}"
    assert all(status == 408 for status, _ in tricklers.answers), tricklers.answers
    assert all(seconds < GRACE + 3 for _, seconds in tricklers.answers), tricklers.answers
    log = runtime.log()
    assert "cut off a request from 127.0.0.1" in log and "request body too slow" in log, log
    assert runtime.get("/v2/health/ready").status_code == 200


def test_two_slow_256mib_bodies_hold_nothing_and_are_cut_off(runtime: RuntimeProcess) -> None:
    tricklers, load = attack(runtime, 2, 256 << 20, 2 * GRACE + 10)
    check(runtime, tricklers, load, 2)


def test_fifty_slow_small_bodies_hold_nothing_and_are_cut_off(runtime: RuntimeProcess) -> None:
    tricklers, load = attack(runtime, 50, 100, 2 * GRACE + 10)
    check(runtime, tricklers, load, 50)


def test_readiness_is_false_while_the_memory_is_spent_and_true_after(tmp_path: Path) -> None:
    """A claim of 27 MiB (a 1 MiB JSON body) on 28 MiB, kept by a client sending at a
    rate the settings allow: requests that need more than the 1 MiB left are refused
    with 503 / RESOURCE_EXHAUSTED within the wait (a small gRPC message, which needs no
    JSON window, still fits), then readiness is 503 / ServerReady false until the
    client goes."""
    env = {
        "HOTSWAP_CONFIG_DIR": publish_tiny(tmp_path),
        "HOTSWAP_MAX_REQUEST_BYTES": str(1 << 20),
        "HOTSWAP_REQUEST_MEMORY_BYTES": str(28 << 20),
        "HOTSWAP_BODY_MIN_RATE": "1",
        "HOTSWAP_BODY_GRACE_SECONDS": "1",
        "HOTSWAP_REQUEST_WAIT_SECONDS": "0.5",
        "HOTSWAP_OVERLOAD_UNREADY_SECONDS": "2",
    }
    with running(tmp_path, env) as rt, grpc.insecure_channel(rt.grpc_target) as channel:
        server_ready = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerReady",
            request_serializer=pb.ServerReadyRequest.SerializeToString,
            response_deserializer=pb.ServerReadyResponse.FromString,
        )
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        hog = Tricklers(rt.url, 1, 1 << 20)
        thread = threading.Thread(target=hog.run)
        thread.start()
        try:
            started = time.monotonic()
            answer = httpx.post(rt.url + INFER, content=BODY, timeout=10)
            assert answer.status_code == 503 and "retry later" in answer.json()["error"]
            assert time.monotonic() - started < 3, "refused within the wait, not queued"

            def unready() -> bool:
                httpx.post(rt.url + INFER, content=BODY, timeout=10)  # refused again
                return rt.get("/v2/health/ready").status_code == 503

            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as refused:  # 768 KiB: 1.5 MiB to decode
                infer(grpc_request(48 << 10), timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            assert time.monotonic() - started < 3, "refused within the wait, not queued"
            wait_for(unready, 20, "readiness 503 while the memory is spent", interval=0.2)
            assert "refusing requests" in rt.get("/v2/health/ready").json()["error"]
            assert not server_ready(pb.ServerReadyRequest(), timeout=5).ready
        finally:
            hog.stop.set()
            thread.join(10)
        wait_for(lambda: rt.get("/v2/health/ready").status_code == 200, 10, "ready again")
        assert server_ready(pb.ServerReadyRequest(), timeout=5).ready
        assert httpx.post(rt.url + INFER, content=BODY, timeout=10).status_code == 200
        assert infer(grpc_request(), timeout=10).model_version == "1"
        assert hog.answers == [], "the hog kept its rate and was not cut off"
