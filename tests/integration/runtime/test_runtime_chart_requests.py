"""The chart's requests, against a real runtime serving the example ModelDeployment
(examples/quickstart.yaml: resnet18, 10 classes, 3x32x32 inputs) the way its pod does:
HOTSWAP_HOST is a stand-in pod IP (127.0.0.2) and every request goes to 127.0.0.1, where
`kubectl port-forward` connects inside the pod.

* NOTES.txt's commands (curl, curl with a JSON body, tritonclient over gRPC), as
  `helm install` prints them, with localhost's ports replaced by the runtime's (the
  port-forward maps the same port numbers);
* the `helm test` script (files/inference-test.py, as the test Pod runs it): exit 0
  with the model's answer, exit 1 for a model the runtime does not serve.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from devcluster import checkpoints as ck
from devcluster.helm import CHART
from examples import checkpoints as examples
from tests.fixtures_runtime.server import RuntimeProcess, running

MODEL = "quickstart"
SCRIPT = CHART / "files" / "inference-test.py"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    root = tmp_path_factory.mktemp("chart-requests")
    path, sha = examples.make(1, root)
    stable = ck.revision(
        1,
        f"file://{path}",
        sha,
        architecture=f"torchvision/{examples.ARCHITECTURE}",
        input_shape=(3, 32, 32),
        args=examples.ARGS,
    )
    ck.publish(root / "config", ck.config(1, stable, name=MODEL))
    env = {"HOTSWAP_CONFIG_DIR": str(root / "config"), "HOTSWAP_HOST": "127.0.0.2"}
    with running(root, env, model=MODEL) as process:
        yield process


def loopback(runtime: RuntimeProcess) -> tuple[str, str]:
    """(REST, gRPC) host:port on 127.0.0.1, where port-forward connects."""
    grpc_port = runtime.grpc_target.rsplit(":", 1)[1]
    return f"127.0.0.1:{urlsplit(runtime.url).port}", f"127.0.0.1:{grpc_port}"


def notes(helm_bin: Path) -> str:
    done = subprocess.run(
        [str(helm_bin), "install", "hs", str(CHART), "-n", "ops", "--dry-run=client"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout[done.stdout.index("NOTES:") :]


def commands(text: str, rest: str, grpc: str) -> list[str]:
    """NOTES' request commands (indented lines after "send it a request", backslash
    continuations joined), pointed at ``rest`` and ``grpc``, without the port-forward."""
    section = text[text.index("send it a request") : text.index("helm test")]
    joined = section.replace("\\\n", " ")
    found = [line.strip() for line in joined.splitlines() if line.startswith("  ")]
    found = [c for c in found if not c.startswith("kubectl port-forward")]
    python = sys.executable
    return [
        c.replace("localhost:8080", rest).replace("localhost:8081", grpc).replace("python3", python)
        for c in found
    ]


def run(command: str) -> str:
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
    return done.stdout


def test_the_notes_requests_get_the_models_answer(runtime: RuntimeProcess, helm_bin: Path) -> None:
    metadata, infer, triton = commands(notes(helm_bin), *loopback(runtime))
    assert metadata.startswith("curl") and "tritonclient" in triton
    meta = json.loads(run(metadata))
    assert meta["name"] == MODEL and meta["inputs"][0]["shape"] == [-1, 3, 32, 32]
    answer = json.loads(run(infer))
    (output,) = answer["outputs"]
    assert output["shape"] == [1, 10] and len(output["data"]) == 10
    assert answer["model_version"] == "1"
    row = json.loads(run(triton).strip().splitlines()[-1])
    assert row[0] == pytest.approx(output["data"], rel=1e-5)


def helm_test(base: str, model: str) -> subprocess.CompletedProcess[str]:
    script = SCRIPT.read_text()
    return subprocess.run(
        [sys.executable, "-c", script, base, model],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_helm_test_script_passes_on_the_models_answer(runtime: RuntimeProcess) -> None:
    rest, _ = loopback(runtime)
    done = helm_test(f"http://{rest}", MODEL)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"ok: {MODEL} version 1 answered output"


def test_the_helm_test_script_fails_for_a_model_not_served(runtime: RuntimeProcess) -> None:
    rest, _ = loopback(runtime)
    done = helm_test(f"http://{rest}", "nope")
    assert done.returncode == 1
    assert "FAILED:" in done.stderr and "HTTP 404" in done.stderr
