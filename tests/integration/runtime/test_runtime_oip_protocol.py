"""Every OIP v2 endpoint, malformed requests and limits, against real runtime processes.

REST through one kept-alive connection (http.client keeps its socket until the server
closes it), gRPC through the runtime's own generated messages on a real channel.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from devcluster import checkpoints as ck
from devcluster import tiny
from hotswap_runtime.serving.grpc_v2 import inference_pb2 as pb
from tests.fixtures_runtime.server import RuntimeProcess, running, wait_for

INFER = "/v2/models/tiny/infer"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    root = tmp_path_factory.mktemp("oip")
    sha = ck.save(tiny.weights(1), root / "a.safetensors")
    ck.publish(root / "config", ck.config(1, ck.revision(1, f"file://{root}/a.safetensors", sha)))
    env = {"HOTSWAP_CONFIG_DIR": str(root / "config"), "HOTSWAP_MAX_REQUEST_BYTES": "1000000"}
    with running(root, env) as process:
        yield process


class Connection:
    """One HTTP/1.1 connection; ``reused`` tells whether every request went over it."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.conn.connect()
        self.sock = self.conn.sock

    def send(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        self.conn.request(method, path, body=body, headers=headers or {})
        response = self.conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()

    @property
    def reused(self) -> bool:
        return self.conn.sock is self.sock

    def close(self) -> None:
        self.conn.close()


def infer_body(x: list[list[float]], **extra: Any) -> bytes:
    shape = [len(x), len(x[0])]
    spec = {"name": "input", "shape": shape, "datatype": "FP32", "data": x}
    return json.dumps({"inputs": [spec], **extra}).encode()


def test_server_and_model_endpoints(runtime: RuntimeProcess) -> None:
    c = Connection(runtime.url)
    status, _, text = c.send("GET", "/v2")
    meta = json.loads(text)
    assert (
        status == 200 and meta["name"] == "hotswap" and "binary_tensor_data" in meta["extensions"]
    )
    status, _, text = c.send("GET", "/v2/models/tiny/versions/1")
    assert status == 200 and json.loads(text)["versions"] == ["1"]
    assert json.loads(text)["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert json.loads(text)["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}]
    status, _, text = c.send("GET", "/v2/models/tiny/versions/7")
    assert status == 404 and "this pod serves version 1" in json.loads(text)["error"]
    for path, code, ready in [
        ("/v2/models/tiny/ready", 200, True),
        ("/v2/models/tiny/versions/1/ready", 200, True),
        ("/v2/models/tiny/versions/2/ready", 503, False),
    ]:
        status, headers, text = c.send("GET", path)
        body = json.loads(text)
        assert (status, body["name"], body["ready"]) == (code, "tiny", ready), path
        assert headers["hotswap-model-version"] == "1"
    status, _, text = c.send("GET", "/v2/models/other/ready")
    assert status == 404 and "other" in json.loads(text)["error"]
    assert c.reused
    c.close()


def test_version_infer_routes(runtime: RuntimeProcess) -> None:
    c = Connection(runtime.url)
    status, headers, text = c.send(
        "POST", "/v2/models/tiny/versions/1/infer", infer_body([[1, 2, 3, 4]])
    )
    assert status == 200 and json.loads(text)["model_version"] == "1"
    assert headers["hotswap-model-version"] == "1"
    status, _, text = c.send("POST", "/v2/models/tiny/versions/9/infer", infer_body([[1, 2, 3, 4]]))
    assert status == 409 and "version 9 is not serving; version 1 is" in json.loads(text)["error"]
    c.close()


MALFORMED: list[tuple[bytes, dict[str, str], str]] = [
    (b"", {}, "empty"),
    (b"{oops", {}, "not valid JSON"),
    (b"\xc3\x28{}", {}, "not valid JSON"),
    (b'{"inputs": 3}', {}, '"inputs" list'),
    (infer_body([[1, 2, 3, 4]]).replace(b'"input"', b'"pixels"'), {}, "unknown input 'pixels'"),
    (infer_body([[1, 2, 3, 4]]).replace(b'"FP32"', b'"INT8"'), {}, "datatype 'INT8'"),
    (infer_body([[1, 2, 3, 4]]).replace(b"[1, 4]", b'[1, "4"]'), {}, "non-negative integers"),
    (infer_body([[1, 2, 3, 4]]).replace(b"[1, 4]", b"[1, 5]"), {}, "do not fill"),
    (infer_body([[1, 2, 3, "x"]]), {}, "must be numbers"),
    (
        infer_body([[1, 2, 3, 4]]).replace(b"[1, 4]", b"[4294967296, 4294967296]"),
        {},
        "more than a body",
    ),
    (infer_body([[1, 2, 3, 4]], outputs=[{"name": "logits"}]), {}, "unknown output 'logits'"),
    (infer_body([[1, 2, 3]]), {}, "does not match [batch, 4]"),
    (b"[" * 3000 + b"]" * 3000, {}, "not valid JSON"),
    (infer_body([[1, 2, 3, 4]]), {"Inference-Header-Content-Length": "x"}, "non-negative integer"),
    (infer_body([[1, 2, 3, 4]]), {"Inference-Header-Content-Length": "99999"}, "does not fit"),
    (infer_body([[1, 2, 3, 4]]), {"Content-Encoding": "gzip"}, "not supported"),
]


def test_malformed_requests_answer_400_and_keep_the_connection(runtime: RuntimeProcess) -> None:
    c = Connection(runtime.url)
    good = infer_body([[1, 2, 3, 4]])
    expected = tiny.expected(tiny.weights(1), torch.tensor([[1.0, 2, 3, 4]])).flatten().tolist()
    for body, headers, why in MALFORMED:
        status, _, text = c.send("POST", INFER, body, headers)
        error = json.loads(text)["error"]
        assert status == 400 and why in error, (body[:60], status, text[:200])
        assert len(error) < 400
        status, _, text = c.send("POST", INFER, good)  # the connection still serves
        assert status == 200 and json.loads(text)["outputs"][0]["data"] == expected
    assert c.reused, "the server closed the connection after a bad request"
    metrics = runtime.metrics()
    assert 'code="500"' not in metrics
    c.close()


def test_body_limit_is_413_before_the_body_is_read(runtime: RuntimeProcess) -> None:
    c = Connection(runtime.url)
    c.conn.putrequest("POST", INFER)
    c.conn.putheader("Content-Length", str(50_000_000))
    c.conn.endheaders()  # no body sent: the answer must come from the headers alone
    response = c.conn.getresponse()
    assert (
        response.status == 413
        and "over this runtime's limit" in json.loads(response.read())["error"]
    )
    c.close()
    chunked = http.client.HTTPConnection(*runtime.url.removeprefix("http://").split(":"))
    chunks = (b"[" + b"0," * 100_000 + b"0]" for _ in range(10))
    chunked.request("POST", INFER, body=chunks, encode_chunked=True)
    assert chunked.getresponse().status == 413
    chunked.close()


def test_binary_tensor_data_both_ways(runtime: RuntimeProcess) -> None:
    x = np.array([[1, 2, 3, 4], [4, 3, 2, 1]], np.float32)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 32},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    c = Connection(runtime.url)
    status, headers, raw = c.send(
        "POST", INFER, head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head))}
    )
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    length = int(headers["inference-header-content-length"])
    meta = json.loads(raw[:length])
    assert (
        meta["outputs"][0]["parameters"]["binary_data_size"] == 24 and meta["model_version"] == "1"
    )
    expected = tiny.expected(tiny.weights(1), torch.from_numpy(x))
    assert np.frombuffer(raw[length:], "<f4").tolist() == expected.flatten().tolist()
    c.close()


def test_grpc_service(runtime: RuntimeProcess) -> None:
    with grpc.insecure_channel(runtime.grpc_target) as channel:

        def rpc(name: str, request: Any, answer: Any) -> Any:
            call = channel.unary_unary(
                f"/inference.GRPCInferenceService/{name}",
                request_serializer=type(request).SerializeToString,
                response_deserializer=answer.FromString,
            )
            return call.with_call(request, timeout=30)

        assert rpc("ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse)[0].live
        assert rpc("ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse)[0].ready
        ready = rpc(
            "ModelReady", pb.ModelReadyRequest(name="tiny", version="1"), pb.ModelReadyResponse
        )
        assert ready[0].ready
        other = rpc(
            "ModelReady", pb.ModelReadyRequest(name="tiny", version="5"), pb.ModelReadyResponse
        )
        assert not other[0].ready
        meta, call = rpc(
            "ModelMetadata", pb.ModelMetadataRequest(name="tiny"), pb.ModelMetadataResponse
        )
        assert list(meta.versions) == ["1"] and list(meta.inputs[0].shape) == [-1, 4]
        assert ("hotswap-model-version", "1") in call.trailing_metadata()
        server = rpc("ServerMetadata", pb.ServerMetadataRequest(), pb.ServerMetadataResponse)[0]
        assert "binary_tensor_data" in server.extensions

        x = np.array([[1, 2, 3, 4]], np.float32)
        request = pb.ModelInferRequest(model_name="tiny", id="q")
        request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(x.tobytes())
        answer = rpc("ModelInfer", request, pb.ModelInferResponse)[0]
        expected = tiny.expected(tiny.weights(1), torch.from_numpy(x)).flatten().tolist()
        assert answer.model_version == "1" and answer.id == "q"
        assert np.frombuffer(answer.raw_output_contents[0], "<f4").tolist() == expected

        for change, code, why in [
            (lambda r: setattr(r, "model_name", "nope"), grpc.StatusCode.NOT_FOUND, "nope"),
            (
                lambda r: r.inputs[0].shape.append(2),
                grpc.StatusCode.INVALID_ARGUMENT,
                "do not fill",
            ),
            (
                lambda r: setattr(r.inputs[0], "datatype", "FP16"),
                grpc.StatusCode.INVALID_ARGUMENT,
                "FP16",
            ),
            (
                lambda r: setattr(r, "model_version", "4"),
                grpc.StatusCode.FAILED_PRECONDITION,
                "version 4",
            ),
        ]:
            bad = pb.ModelInferRequest()
            bad.CopyFrom(request)
            change(bad)
            with pytest.raises(grpc.RpcError) as caught:
                rpc("ModelInfer", bad, pb.ModelInferResponse)
            assert caught.value.code() == code and why in caught.value.details()


def test_metadata_before_any_model(tmp_path: Path) -> None:
    with running(tmp_path, {"HOTSWAP_CONFIG_DIR": str(tmp_path / "none")}, ready=False) as rt:
        meta = rt.metadata()
        assert meta["state"] == "Pending" and meta["versions"] == []
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1]}]
        assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1]}]
        response = rt.get("/v2/models/tiny/ready")
        assert response.status_code == 503 and response.json()["ready"] is False
        status = http.client.HTTPConnection(*rt.url.removeprefix("http://").split(":"))
        status.request("POST", INFER, body=infer_body([[1, 2, 3, 4]]))
        assert status.getresponse().status == 503


@pytest.mark.slow
def test_batched_requests_share_one_forward_and_name_its_revision(tmp_path: Path) -> None:
    sha = ck.save(tiny.weights(3), tmp_path / "a.safetensors")
    ck.publish(
        tmp_path / "config", ck.config(4, ck.revision(4, f"file://{tmp_path}/a.safetensors", sha))
    )
    env = {
        "HOTSWAP_CONFIG_DIR": str(tmp_path / "config"),
        "HOTSWAP_MAX_BATCH_SIZE": "16",
        "HOTSWAP_MAX_QUEUE_DELAY_US": "200000",
    }
    inputs = [[float(i), 1.0, -2.0, float(i % 3)] for i in range(12)]
    answers: dict[int, tuple[int, dict[str, Any]]] = {}

    def send(i: int) -> None:
        c = Connection(rt.url)
        status, _, text = c.send("POST", INFER, infer_body([inputs[i]]))
        answers[i] = (status, json.loads(text))
        c.close()

    with running(tmp_path, env) as rt:
        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(inputs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        metrics = rt.metrics()
    for i, (status, body) in answers.items():
        expected = tiny.expected(tiny.weights(3), torch.tensor([inputs[i]])).flatten().tolist()
        assert status == 200 and body["model_version"] == "4"
        assert body["outputs"][0]["data"] == expected
    assert len(answers) == len(inputs)
    forwards = float(metrics.split("hotswap_batch_size_count ")[1].split()[0])
    assert forwards < len(inputs), f"{forwards} forward passes for {len(inputs)} requests"


def test_draining_after_sigterm_is_not_ready_on_rest_and_grpc(tmp_path: Path) -> None:
    sha = ck.save(tiny.weights(1), tmp_path / "a.safetensors")
    ck.publish(
        tmp_path / "config", ck.config(1, ck.revision(1, f"file://{tmp_path}/a.safetensors", sha))
    )
    env = {"HOTSWAP_CONFIG_DIR": str(tmp_path / "config"), "HOTSWAP_DRAIN_SECONDS": "30"}
    with running(tmp_path, env) as rt, grpc.insecure_channel(rt.grpc_target) as channel:
        ready = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerReady",
            request_serializer=pb.ServerReadyRequest.SerializeToString,
            response_deserializer=pb.ServerReadyResponse.FromString,
        )
        assert ready(pb.ServerReadyRequest(), timeout=10).ready
        rt.process.send_signal(signal.SIGTERM)
        wait_for(lambda: rt.get("/v2/health/ready").status_code == 503, 10, "not ready")
        assert rt.get("/v2/models/tiny/ready").status_code == 503
        assert not ready(pb.ServerReadyRequest(), timeout=10).ready
        c = Connection(rt.url)  # still serving while draining
        status, _, text = c.send("POST", INFER, infer_body([[1, 2, 3, 4]]))
        assert status == 200 and json.loads(text)["model_version"] == "1"
        c.close()
