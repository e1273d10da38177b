"""Calls multiplexed on one gRPC connection, as one channel shared by an application's
threads sends them, against a real runtime process: the streams-per-connection limit
(HOTSWAP_GRPC_MAX_STREAMS) makes calls beyond it wait in the client, and never refuses
one that the client sent within it (REFUSED_STREAM, seen as UNAVAILABLE), however fast
calls end and begin."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from devcluster import tiny
from hotswap_runtime.serving.grpc_v2 import inference_pb2 as pb
from tests.fixtures_runtime.h2grpc import MODEL_INFER
from tests.fixtures_runtime.server import publish_tiny, running

STREAMS = 4  # HOTSWAP_GRPC_MAX_STREAMS
CALLS = 300  # per thread
X = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
EXPECTED = tiny.expected(tiny.weights(1), X).flatten().tolist()


@pytest.mark.parametrize("threads", [STREAMS, 2 * STREAMS])
def test_calls_on_one_connection_are_never_refused(tmp_path: Path, threads: int) -> None:
    env = {"HOTSWAP_CONFIG_DIR": publish_tiny(tmp_path), "HOTSWAP_GRPC_MAX_STREAMS": str(STREAMS)}
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(X.numpy().tobytes())
    outcomes: list[str] = []
    lock = threading.Lock()
    with running(tmp_path, env) as runtime, grpc.insecure_channel(runtime.grpc_target) as channel:
        call = channel.unary_unary(
            MODEL_INFER,
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )

        def client() -> None:
            for _ in range(CALLS):
                try:
                    answer = call(request, timeout=60)
                    values = np.frombuffer(answer.raw_output_contents[0], "<f4").tolist()
                    outcome = "ok" if values == EXPECTED else f"wrong answer {values}"
                except grpc.RpcError as exc:
                    outcome = f"{exc.code().name}: {exc.details()}"
                with lock:
                    outcomes.append(outcome)

        workers = [threading.Thread(target=client) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(300)
    failed = [o for o in outcomes if o != "ok"]
    assert len(outcomes) == threads * CALLS
    assert failed == [], f"{len(failed)} of {len(outcomes)} calls failed: {failed[:3]}"
