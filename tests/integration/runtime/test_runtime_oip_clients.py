"""tritonclient and kserve's clients, at their defaults, against a real runtime process.

Both client libraries send binary tensor data by default (REST) and raw_input_contents
(gRPC). Each client runs in its own process (see tests/fixtures_runtime/clients.py) and
must get the tiny model's exact output, from the revision the answer names.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from devcluster import checkpoints as ck
from devcluster import tiny
from tests.fixtures_runtime import clients
from tests.fixtures_runtime.server import RuntimeProcess, running

X = [[1.0, 2.0, 3.0, 4.0], [-2.0, 0.0, 5.0, 1.0]]


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    root = tmp_path_factory.mktemp("clients")
    sha = ck.save(tiny.weights(1), root / "a.safetensors")
    ck.publish(root / "config", ck.config(1, ck.revision(1, f"file://{root}/a.safetensors", sha)))
    with running(root, {"HOTSWAP_CONFIG_DIR": str(root / "config")}) as process:
        yield process


def ask(kind: str, runtime: RuntimeProcess) -> dict:
    return clients.ask(kind, runtime.url, runtime.grpc_target, runtime.model, X)


@pytest.mark.parametrize("kind", ["triton-http", "triton-grpc", "kserve-rest", "kserve-grpc"])
def test_client_at_defaults_gets_the_models_answer(kind: str, runtime: RuntimeProcess) -> None:
    got = ask(kind, runtime)
    expected = tiny.expected(tiny.weights(1), torch.tensor(X)).tolist()
    assert got["output"] == expected
    assert got["version"] == "1"
    assert got["live"] is True and got["ready"] is True and got["model_ready"] is True
    if kind.startswith("triton"):
        meta = got["metadata"]
        assert meta["name"] == "tiny" and meta["versions"] == ["1"]
        assert [
            (t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]
        ] == [("input", "FP32", [-1, 4])]
        assert [(t["name"], [int(d) for d in t["shape"]]) for t in meta["outputs"]] == [
            ("output", [-1, 3])
        ]
        assert "binary_tensor_data" in got["server"]["extensions"]
    if kind == "triton-http":
        assert got["binary"], "tritonclient asked for binary outputs and got JSON"


def test_clients_see_a_swap(runtime: RuntimeProcess, tmp_path: Path) -> None:
    config_dir = Path(runtime.log_path).parent / "config"
    root = config_dir.parent
    sha = ck.save(tiny.weights(2), root / "b.safetensors")
    ck.publish(config_dir, ck.config(2, ck.revision(2, f"file://{root}/b.safetensors", sha)))
    runtime.wait_version(2)
    expected = tiny.expected(tiny.weights(2), torch.tensor(X)).tolist()
    for kind in ("triton-grpc", "kserve-rest"):
        got = ask(kind, runtime)
        assert (got["output"], got["version"]) == (expected, "2"), kind
