"""The images built from the Dockerfile, run as the chart runs them but by podman: a
read-only root filesystem, uid 10001, every capability dropped, no privilege escalation,
and only the volumes the chart or the operator mounts writable (/tmp; the runtime's
checkpoint cache). The runtime must load a checkpoint and answer an inference request;
the operator must log in to the API server and answer its liveness probe.
"""

from __future__ import annotations

import base64
import json
import resource
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devcluster import node as real
from devcluster.checkpoints import publish
from devcluster.cluster import Cluster, free_port
from devcluster.fleet import infer_body
from devcluster.waiting import wait_for
from examples import checkpoints

LOCKED_DOWN = (
    "--read-only",
    "--user=10001:10001",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
    "--network=host",  # no bridge or firewall rules of podman's own on this machine
    "--tmpfs=/tmp:rw,size=64m,mode=1777",
    # Rootful podman raises nofile and nproc to values this machine refuses ("error
    # setting rlimit type 7: operation not permitted"); keep them within ours.
    "--ulimit=nofile={}:{}".format(*resource.getrlimit(resource.RLIMIT_NOFILE)),
    "--ulimit=nproc=4096:4096",
)


@pytest.fixture(scope="module")
def images() -> None:
    real.ensure_images()


@pytest.fixture
def run(tmp_path: Path) -> Iterator[list[str]]:
    """Start a detached container; it is removed afterwards. Yields the command prefix."""
    names: list[str] = []

    def start(image: str, *args: str) -> str:
        name = f"hotswap-image-test-{uuid.uuid4().hex[:8]}"
        names.append(name)
        subprocess.run(
            [*real.PODMAN, "run", "-d", "--name", name, *LOCKED_DOWN, *args, image],
            check=True,
            capture_output=True,
        )
        return name

    yield start  # type: ignore[misc]
    for name in names:
        subprocess.run([*real.PODMAN, "rm", "-f", "-t", "5", name], capture_output=True)


def logs(name: str) -> str:
    done = subprocess.run([*real.PODMAN, "logs", name], capture_output=True, text=True)
    return done.stdout + done.stderr


def inspect(name: str) -> dict:
    out = subprocess.run(
        [*real.PODMAN, "inspect", name], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)[0]


def test_the_runtime_image_serves_read_only_as_uid_10001(images, run, tmp_path):
    path, sha = checkpoints.make(1)
    config = tmp_path / "model"
    revision = {
        "revision": 1,
        "model": {
            "architecture": "torchvision/resnet18",
            "args": checkpoints.ARGS,
            "inputShape": [3, 32, 32],
        },
        "checkpoint": {"uri": checkpoints.pod_uri(path), "sha256": sha},
    }
    publish(config, json.dumps({"name": "resnet18", "generation": 1, "stable": revision}))
    for item in (config, *config.rglob("*")):
        item.chmod(0o755 if item.is_dir() else 0o644)
    port = free_port()
    name = run(
        real.RUNTIME_IMAGE,
        "--tmpfs=/var/cache/hotswap:rw,size=512m,mode=1777",
        f"--volume={checkpoints.DEFAULT_DIR}:/models:ro",
        f"--volume={config}:/etc/hotswap/model:ro",
        "--env=HOTSWAP_MODEL_NAME=resnet18",
        "--env=HOTSWAP_CONFIG_DIR=/etc/hotswap/model",
        "--env=HOTSWAP_HOST=127.0.0.1",
        f"--env=HOTSWAP_PORT={port}",
        "--env=HOTSWAP_FILE_ROOTS=/models",
        "--env=HOTSWAP_API_WATCH=false",
        "--env=HOTSWAP_TORCH_THREADS=1",
    )
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        return httpx.get(f"{base}/v2/health/ready", timeout=5).json().get("model_version") == "1"

    try:
        wait_for(ready, timeout=180, interval=0.5, what="the runtime container serving v1")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; container log:\n{logs(name)[-3000:]}") from exc
    answer = httpx.post(
        f"{base}/v2/models/resnet18/infer", json=infer_body((3, 32, 32)), timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == "1"
    assert answer.json()["outputs"][0]["shape"] == [1, 10]
    state = inspect(name)
    assert state["Config"]["User"] == "10001:10001"
    assert state["HostConfig"]["ReadonlyRootfs"] is True
    assert state["State"]["Running"] is True


def test_the_operator_image_answers_its_probe_read_only_as_uid_10001(
    images, run, tmp_path, cluster: Cluster
):
    # A self-contained kubeconfig (uid 10001 cannot read the harness's key files).
    pki = cluster.root / "pki"
    data = {n: base64.b64encode((pki / n).read_bytes()).decode() for n in ("ca.crt", "admin.crt")}
    data["admin.key"] = base64.b64encode((pki / "admin.key").read_bytes()).decode()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {
                            "server": cluster.server,
                            "certificate-authority-data": data["ca.crt"],
                        },
                    }
                ],
                "users": [
                    {
                        "name": "admin",
                        "user": {
                            "client-certificate-data": data["admin.crt"],
                            "client-key-data": data["admin.key"],
                        },
                    }
                ],
                "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
                "current-context": "local",
            }
        )
    )
    kubeconfig.chmod(0o644)
    tmp_path.chmod(0o755)
    port = free_port()
    name = run(
        real.OPERATOR_IMAGE,
        f"--volume={kubeconfig}:/etc/hotswap/kubeconfig:ro",
        "--env=KUBECONFIG=/etc/hotswap/kubeconfig",
        "--env=HOTSWAP_NAMESPACES=default",
        "--env=POD_IP=127.0.0.1",
        f"--env=HOTSWAP_LIVENESS_PORT={port}",
    )

    def healthy() -> bool:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200

    try:
        wait_for(healthy, timeout=90, interval=0.5, what="the operator's /healthz")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; container log:\n{logs(name)[-3000:]}") from exc
    state = inspect(name)
    assert state["Config"]["User"] == "10001:10001"
    assert state["HostConfig"]["ReadonlyRootfs"] is True
    assert state["State"]["Running"] is True
    assert "Traceback" not in logs(name)
