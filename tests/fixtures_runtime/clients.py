"""The clients users already have, at their default settings, one per process.

``python -m tests.fixtures_runtime.clients KIND REST_URL GRPC_TARGET MODEL`` asks the
runtime what every client asks (liveness, readiness, server and model metadata) and
runs one inference with an input given as JSON on stdin ({"data": [[...]]}), then prints
one JSON object. KIND: triton-http, triton-grpc, kserve-rest, kserve-grpc.

Each kind runs in its own process: tritonclient's and kserve's generated protobuf
modules both define the ``inference`` package in protobuf's default descriptor pool and
cannot be imported into one process (nor with the runtime's own).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def ask(kind: str, url: str, target: str, model: str, data: Any) -> dict[str, Any]:
    """Run client KIND in a process of its own (this module's main) and return what it
    printed; ``data`` is the input, a nested list of floats."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.fixtures_runtime.clients", kind, url, target, model],
        input=json.dumps({"data": data}),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{kind} failed:\n{done.stderr[-3000:]}"
    return dict(json.loads(done.stdout.splitlines()[-1]))


def triton_http(url: str, _: str, model: str, x: np.ndarray) -> dict[str, Any]:
    import tritonclient.http as client

    c = client.InferenceServerClient(url.removeprefix("http://"))
    inp = client.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # binary_data=True by default
    result = c.infer(model, [inp])
    response = result.get_response()
    return {
        "live": c.is_server_live(),
        "ready": c.is_server_ready(),
        "model_ready": c.is_model_ready(model),
        "server": c.get_server_metadata(),
        "metadata": c.get_model_metadata(model),
        "output": result.as_numpy("output").tolist(),
        "version": response["model_version"],
        "binary": "data" not in response["outputs"][0],
    }


def triton_grpc(_: str, target: str, model: str, x: np.ndarray) -> dict[str, Any]:
    import tritonclient.grpc as client

    c = client.InferenceServerClient(target)
    inp = client.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = c.infer(model, [inp])
    response = result.get_response(as_json=True)
    meta = c.get_model_metadata(model, as_json=True)
    return {
        "live": c.is_server_live(),
        "ready": c.is_server_ready(),
        "model_ready": c.is_model_ready(model),
        "server": c.get_server_metadata(as_json=True),
        "metadata": meta,
        "output": result.as_numpy("output").tolist(),
        "version": response["model_version"],
    }


def kserve_rest(url: str, _: str, model: str, x: np.ndarray) -> dict[str, Any]:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def run() -> dict[str, Any]:
        c = InferenceRESTClient(RESTConfig(protocol="v2"))
        inp = InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)  # binary_data=True by default
        headers: dict[str, str] = {}
        result = await c.infer(
            url, InferRequest(model_name=model, infer_inputs=[inp]), model, response_headers=headers
        )
        out = {
            "live": await c.is_server_live(url),
            "ready": await c.is_server_ready(url),
            "model_ready": await c.is_model_ready(url, model),
            "output": result.outputs[0].as_numpy().tolist(),
            "version": headers.get("hotswap-model-version"),
        }
        await c.close()
        return out

    return asyncio.run(run())


def kserve_grpc(_: str, target: str, model: str, x: np.ndarray) -> dict[str, Any]:
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def run() -> dict[str, Any]:
        c = InferenceGRPCClient(target)
        inp = InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = await c.infer(InferRequest(model_name=model, infer_inputs=[inp]))
        out = {
            "live": await c.is_server_live(),
            "ready": await c.is_server_ready(),
            "model_ready": await c.is_model_ready(model),
            "output": result.outputs[0].as_numpy().tolist(),
            "version": result.model_version,
        }
        await c.close()
        return out

    return asyncio.run(run())


KINDS = {
    "triton-http": triton_http,
    "triton-grpc": triton_grpc,
    "kserve-rest": kserve_rest,
    "kserve-grpc": kserve_grpc,
}


def main(argv: list[str]) -> None:
    kind, url, target, model = argv
    x = np.asarray(json.loads(sys.stdin.read())["data"], dtype=np.float32)
    print(json.dumps(KINDS[kind](url, target, model, x)))


if __name__ == "__main__":
    main(sys.argv[1:])
