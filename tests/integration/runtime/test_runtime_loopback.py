"""kubectl port-forward reaches a runtime started the way its pod starts it.

In a pod HOTSWAP_HOST is the pod IP, and port-forward connects to 127.0.0.1 inside the
pod's network namespace; here 127.0.0.2 (on ``lo``, not the address port-forward dials)
stands in for the pod IP. An inference request must succeed through both addresses, on
REST and on gRPC, and /metrics answer on both (serving/listen.py); only the pod IP
answers when HOTSWAP_LOOPBACK is off.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import httpx
import numpy as np
import pytest
import torch

from devcluster import tiny
from hotswap_runtime.serving.grpc_v2 import inference_pb2 as pb
from tests.fixtures_runtime.server import RuntimeProcess, publish_tiny, running

POD_IP = "127.0.0.2"
X = [[1.0, 2.0, 3.0, 4.0]]


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    root = tmp_path_factory.mktemp("loopback")
    env = {"HOTSWAP_CONFIG_DIR": publish_tiny(root), "HOTSWAP_HOST": POD_IP}
    with running(root, env) as process:
        yield process


def ports(runtime: RuntimeProcess) -> tuple[int, int]:
    rest = urlsplit(runtime.url).port
    assert rest is not None
    return rest, int(runtime.grpc_target.rsplit(":", 1)[1])


def rest_infer(address: str, port: int) -> list[float]:
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": X}]}
    answer = httpx.post(f"http://{address}:{port}/v2/models/tiny/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    data: list[float] = answer.json()["outputs"][0]["data"]
    return data


def grpc_infer(address: str, port: int) -> list[float]:
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.array(X, np.float32).tobytes())
    with grpc.insecure_channel(f"{address}:{port}") as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        answer = infer(request, timeout=30)
    return [float(v) for v in np.frombuffer(answer.raw_output_contents[0], "<f4")]


def expected() -> list[float]:
    return [float(v) for v in tiny.expected(tiny.weights(1), torch.tensor(X)).flatten()]


@pytest.mark.parametrize("address", [POD_IP, "127.0.0.1"])
def test_rest_and_grpc_answer_on_the_pod_ip_and_on_loopback(
    runtime: RuntimeProcess, address: str
) -> None:
    rest, grpc_port = ports(runtime)
    assert rest_infer(address, rest) == pytest.approx(expected())
    assert grpc_infer(address, grpc_port) == pytest.approx(expected())
    metrics = httpx.get(f"http://{address}:{rest}/metrics", timeout=10)
    assert metrics.status_code == 200 and "hotswap_" in metrics.text


def test_loopback_off_serves_the_pod_ip_only(tmp_path: Path) -> None:
    env = {
        "HOTSWAP_CONFIG_DIR": publish_tiny(tmp_path),
        "HOTSWAP_HOST": POD_IP,
        "HOTSWAP_LOOPBACK": "false",
    }
    with running(tmp_path, env) as runtime:
        rest, grpc_port = ports(runtime)
        assert rest_infer(POD_IP, rest) == pytest.approx(expected())
        with pytest.raises(httpx.ConnectError):
            rest_infer("127.0.0.1", rest)
        with pytest.raises(grpc.RpcError) as refused:
            grpc_infer("127.0.0.1", grpc_port)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
