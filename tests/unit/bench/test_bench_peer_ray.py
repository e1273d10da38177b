"""bench/peer_ray.py's replica without a Ray cluster: what ``reconfigure`` loads is what
answers, and every answer names it. Needs the optional `peer` extra (ray); CI skips it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("ray", reason="the optional `peer` extra (ray[serve]) is not installed")

import safetensors.torch
import torchvision
from starlette.requests import Request

from bench.peer_ray import Model

SHAPE = [3, 16, 16]


def call(model: Model, method: str, body: bytes = b"") -> dict:
    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": method, "path": "/", "headers": [], "query_string": b""}
    response = asyncio.run(model(Request(scope, receive)))
    assert response.status_code == 200, response.body
    return json.loads(response.body)


def checkpoint(tmp_path: Path, seed: int) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(seed)
    net = torchvision.models.get_model("resnet18", weights=None).eval()
    path = tmp_path / f"{seed}.safetensors"
    safetensors.torch.save_file(net.state_dict(), str(path))
    return path, net


def test_reconfigure_swaps_the_weights_that_answer(tmp_path: Path) -> None:
    x = torch.rand(1, *SHAPE)
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, *SHAPE],
                    "datatype": "FP32",
                    "data": x.flatten().tolist(),
                }
            ]
        }
    ).encode()
    model = Model("resnet18", SHAPE)
    for seed in (1, 2):
        path, net = checkpoint(tmp_path, seed)
        model.reconfigure({"checkpoint": str(path), "version": str(seed)})
        assert call(model, "GET")["model_version"] == str(seed)
        answer = call(model, "POST", body)
        assert answer["model_version"] == str(seed)
        with torch.inference_mode():
            want = net(x).flatten()
        got = torch.tensor(answer["outputs"][0]["data"])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
