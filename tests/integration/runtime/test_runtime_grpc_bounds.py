"""gRPC messages that cost more than their bytes, or never arrive, against a real runtime
process under load: bounded before they cost.

A runtime process (a fresh one per case) serves the tiny model while clients send
inference requests without pause over REST and gRPC. Each case sends what no gRPC library sends, and
checks that every benign request got its exact answer (0 failed), that the process's
peak RSS (VmHWM, reset before the case) stayed under the bound the case names, that the
process is alive, and that the refusal is answered and logged with its reason:

* inflated: a message of empty ``inputs`` (or ``outputs``, ``parameters``,
  ``raw_input_contents``) entries parses into 16 to 45 times its size in protobuf
  objects; the runtime reads the wire format first and refuses it before parsing;
* partial: 16 streams each announce a message of almost HOTSWAP_MAX_REQUEST_BYTES,
  send most of it and stop; at most HOTSWAP_GRPC_RECEIVING of them are let in at once
  (twice that while one round is being freed), each for HOTSWAP_GRPC_RECEIVE_SECONDS,
  then refused and freed;
* half-closed: a stream that ends inside (or before) its message is answered at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import h2.settings
import httpx
import numpy as np
import pytest
import torch

from devcluster import checkpoints as ck
from devcluster import tiny
from hotswap_runtime.serving.grpc_v2 import inference_pb2 as pb
from tests.fixtures_runtime.h2grpc import MODEL_INFER, RawCall, frame
from tests.fixtures_runtime.server import (
    RuntimeProcess,
    reset_peak,
    running,
    status_kib,
    wait_for,
)

MIB = 1 << 20
MAX_MESSAGE = 32 * MIB  # HOTSWAP_MAX_REQUEST_BYTES
MEMORY = 128 * MIB  # HOTSWAP_REQUEST_MEMORY_BYTES
RECEIVING = 4  # HOTSWAP_GRPC_RECEIVING
RECEIVE_SECONDS = 2.0  # HOTSWAP_GRPC_RECEIVE_SECONDS
MARGIN = 64 * MIB  # benign traffic, streams waiting with their 64 KiB windows, Python
X = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, -1.0, 2.0, 5.0]])
EXPECTED = [float(v) for v in tiny.expected(tiny.weights(1), X).flatten()]
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


class Traffic:
    """Benign clients sending small requests without pause, over REST and gRPC; every
    answer must be exactly the tiny model's."""

    def __init__(self, runtime: RuntimeProcess) -> None:
        self.runtime = runtime
        self.ok = {"rest": 0, "grpc": 0}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, args=(send,), daemon=True)
            for send in (self._rest, self._grpc)
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)

    def answers(self) -> int:
        with self._lock:
            return sum(self.ok.values())

    def _loop(self, send: Callable[[], tuple[str, list[float]]]) -> None:
        while not self._stop.is_set():
            try:
                kind, outputs = send()
            except (httpx.HTTPError, grpc.RpcError, KeyError, ValueError) as exc:
                with self._lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            with self._lock:
                if outputs == EXPECTED:
                    self.ok[kind] += 1
                else:
                    self.failures.append(f"{kind}: wrong outputs {outputs}")

    def _rest(self) -> tuple[str, list[float]]:
        body = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32"}]}
        body["inputs"][0]["data"] = X.flatten().tolist()
        url = f"{self.runtime.url}/v2/models/tiny/infer"
        response = httpx.post(url, json=body, timeout=60)
        response.raise_for_status()
        return "rest", response.json()["outputs"][0]["data"]

    def _grpc(self) -> tuple[str, list[float]]:
        if not hasattr(self, "_stub"):
            self._channel = grpc.insecure_channel(self.runtime.grpc_target)
            self._stub = self._channel.unary_unary(
                MODEL_INFER,
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
        request = pb.ModelInferRequest(model_name="tiny")
        request.inputs.add(name="input", datatype="FP32", shape=[2, 4])
        request.raw_input_contents.append(X.numpy().tobytes())
        answer = self._stub(request, timeout=60)
        values = np.frombuffer(answer.raw_output_contents[0], "<f4")
        return "grpc", [float(v) for v in values]


@dataclass
class World:
    runtime: RuntimeProcess
    traffic: Traffic

    def pid(self) -> int:
        return self.runtime.process.pid


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A fresh process for each case: memory one case left in the heap would hide what
    the next one allocates."""
    base = tmp_path
    sha = ck.save(tiny.weights(1), base / "v1.safetensors")
    rev = ck.revision(1, (base / "v1.safetensors").as_uri(), sha)
    ck.publish(base / "config", ck.config(1, rev))
    env = {
        "HOTSWAP_CONFIG_DIR": str(base / "config"),
        "HOTSWAP_MAX_REQUEST_BYTES": str(MAX_MESSAGE),
        "HOTSWAP_REQUEST_MEMORY_BYTES": str(MEMORY),
        "HOTSWAP_GRPC_RECEIVING": str(RECEIVING),
        "HOTSWAP_GRPC_RECEIVE_SECONDS": str(RECEIVE_SECONDS),
    }
    with running(base, env) as runtime, Traffic(runtime) as traffic:
        wait_for(lambda: min(traffic.ok.values()) >= 10, 30, "benign REST and gRPC answers")
        yield World(runtime, traffic)
    assert traffic.failures == [], traffic.failures[:5]


def peak_growth(world: World, case: Callable[[], None]) -> int:
    """Bytes the process's peak RSS rose above its RSS before ``case`` ran."""
    pid = world.pid()
    before = status_kib(pid, "VmRSS")
    reset_peak(pid)  # VmHWM := VmRSS
    case()
    return (status_kib(pid, "VmHWM") - before) * 1024


def assert_served_on(world: World, start: int) -> None:
    """The process is alive, benign requests went on being answered, none failed."""
    assert world.runtime.process.poll() is None, "the runtime died"
    wait_for(lambda: world.traffic.answers() >= start + 10, 60, "10 more benign answers")
    assert world.traffic.failures == [], world.traffic.failures[:5]


# ---- inflated: messages that grow when parsed -----------------------------------------

INFLATED_BYTES = 16 * MIB
# field 5 inputs, 6 outputs, 4 parameters, 7 raw_input_contents: empty entries (2 bytes)
INFLATED = {
    "inputs": (b"\x2a\x00", "exactly one input tensor"),
    "outputs": (b"\x32\x00", "this model gives one, 'output'"),
    "parameters": (b"\x22\x00", "more than 64 entries"),
    "raw_input_contents": (b"\x3a\x00", "raw_input_contents has 2 entries"),
}


@pytest.mark.parametrize("kind", sorted(INFLATED))
def test_a_message_that_grows_when_parsed_is_refused_before_parsing(
    world: World, kind: str
) -> None:
    entry, says = INFLATED[kind]
    message = entry * (INFLATED_BYTES // len(entry))
    answers: list[grpc.RpcError | bytes] = []

    def send() -> None:
        with grpc.insecure_channel(world.runtime.grpc_target) as channel:
            call = channel.unary_unary(MODEL_INFER)
            try:
                answers.append(call(message, timeout=120))
            except grpc.RpcError as exc:
                answers.append(exc)

    def case() -> None:
        threads = [threading.Thread(target=send) for _ in range(RECEIVING)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(150)

    start = world.traffic.answers()
    growth = peak_growth(world, case)
    print(f"inflated {kind}: peak RSS +{growth / MIB:.0f} MiB")  # with -s
    # Each message is held twice at most while it arrives (grpc's buffer, then bytes).
    bound = RECEIVING * 2 * INFLATED_BYTES + MARGIN
    assert growth <= bound, f"peak RSS rose {growth // MIB} MiB, over {bound // MIB} MiB"
    assert len(answers) == RECEIVING
    for answer in answers:
        assert isinstance(answer, grpc.RpcError), "an inflated message was served"
        assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT, answer
        assert says in (answer.details() or ""), answer.details()
    assert says in world.runtime.log(), "the refusal was not logged"
    assert_served_on(world, start)


def test_a_large_legitimate_message_is_charged_and_served(world: World) -> None:
    """The largest raw_input_contents message that fits the limit is still served."""
    rows = (MAX_MESSAGE - 4096) // 16
    x = np.ones((rows, 4), np.float32)
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    options = [("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(world.runtime.grpc_target, options=options) as channel:
        call = channel.unary_unary(
            MODEL_INFER,
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        answer = call(request, timeout=120)
    out = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(rows, -1)
    assert out.shape == (rows, tiny.CLASSES)


# ---- partial: messages that never arrive whole -----------------------------------------

ATTACKERS = 16
ANNOUNCED = MAX_MESSAGE - 1024
SENT = MAX_MESSAGE - 2 * MIB


def test_partial_messages_are_bounded_and_refused_after_the_receive_deadline(
    world: World,
) -> None:
    calls: list[RawCall] = []
    data = frame(b"\0" * ANNOUNCED)[: 5 + SENT]

    def attack(call: RawCall) -> None:
        call.send(data, timeout=ATTACKERS * RECEIVE_SECONDS)
        call.wait_answer(ATTACKERS * RECEIVE_SECONDS)

    def case() -> None:
        calls.extend(RawCall(world.runtime.grpc_target) for _ in range(ATTACKERS))
        threads = [threading.Thread(target=attack, args=(c,)) for c in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(4 * ATTACKERS * RECEIVE_SECONDS)

    start = world.traffic.answers()
    began = time.monotonic()
    try:
        growth = peak_growth(world, case)
    finally:
        for call in calls:
            call.close()
    took = time.monotonic() - began
    print(f"partial: peak RSS +{growth / MIB:.0f} MiB, {took:.1f} s")  # with -s
    # A slot is free again once its message is refused; grpc frees that message's
    # bytes a moment later, so one round of slots may overlap the next.
    bound = 2 * RECEIVING * MAX_MESSAGE + MARGIN
    assert growth <= bound, f"peak RSS rose {growth // MIB} MiB, over {bound // MIB} MiB"
    assert [c.status for c in calls] == [DEADLINE_EXCEEDED] * ATTACKERS, [
        (c.status, c.sent, c.reset) for c in calls
    ]
    assert all("HOTSWAP_GRPC_RECEIVE_SECONDS" in c.message for c in calls)
    assert calls[0].settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 32
    assert "did not arrive whole within 2 s" in world.runtime.log()
    assert_served_on(world, start)


# ---- half-closed inside a message --------------------------------------------------------


@pytest.mark.parametrize("sent", [100, 0, -5], ids=["inside", "after-prefix", "no-message"])
def test_a_stream_half_closed_inside_its_message_is_answered_at_once(
    world: World, sent: int
) -> None:
    start = world.traffic.answers()
    call = RawCall(world.runtime.grpc_target)
    try:
        began = time.monotonic()
        call.send(frame(b"\0" * 1000)[: 5 + sent], timeout=5, end=True)
        status = call.wait_answer(5)
        took = time.monotonic() - began
    finally:
        call.close()
    assert status == INVALID_ARGUMENT, (status, call.message, call.reset)
    assert "the stream ended before a whole ModelInferRequest arrived" in call.message
    assert took < 1, f"answered after {took:.2f} s"
    assert "refused: the stream ended before" in world.runtime.log()
    assert_served_on(world, start)
