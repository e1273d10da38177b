"""A real runtime serving a float16 model from sharded float16 weights: FP32 requests in,
FP32 answers out; float32 weights refused without castWeights, the old ones serving."""

from __future__ import annotations

from pathlib import Path

import httpx
import torch

from devcluster import checkpoints as ck
from devcluster import tiny
from tests.fixtures_runtime.server import running

X = [1.0, 2.0, 3.0, 4.0]


def infer(url: str) -> tuple[str, list[float]]:
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": X}]}
    response = httpx.post(url + "/v2/models/tiny/infer", json=body, timeout=10)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["outputs"][0]["datatype"] == "FP32"
    return answer["model_version"], answer["outputs"][0]["data"]


def output_of(seed: int) -> list[float]:
    out: list[float] = tiny.expected(tiny.weights(seed), torch.tensor([X])).flatten().tolist()
    return out


def test_a_float16_model_from_sharded_float16_weights(tmp_path: Path) -> None:
    half = {k: v.half() for k, v in tiny.weights(1).items()}
    manifest, sha = ck.save_sharded(half, tmp_path / "v1", 2)
    full = tmp_path / "v2.safetensors"
    full_sha = ck.save(tiny.weights(2), full)

    def config(n: int, uri: str, sha256: str, **model: object) -> str:
        doc = ck.revision(n, uri, sha256)
        doc["model"].update({"dtype": "float16", **model})
        return ck.config(n, doc)

    folder = tmp_path / "config"
    ck.publish(folder, config(1, f"file://{manifest}", sha))
    with running(tmp_path, {"HOTSWAP_CONFIG_DIR": str(folder)}) as runtime:
        assert infer(runtime.url) == ("1", output_of(1))
        ck.publish(folder, config(2, f"file://{full}", full_sha))
        failure = runtime.wait_failure(2)
        assert failure["code"] == "state_dict_mismatch" and "castWeights" in failure["reason"]
        assert infer(runtime.url) == ("1", output_of(1))
        ck.publish(folder, config(3, f"file://{full}", full_sha, castWeights=True))
        runtime.wait_version(3)
        assert infer(runtime.url) == ("3", output_of(2))
