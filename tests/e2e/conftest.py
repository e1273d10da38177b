"""e2e fixtures: a control plane with a real node (devcluster/node.py), the images
built from the Dockerfile, and one helm install of the chart per test module.

The e2e package has its own control plane (package scope), started with the node's
address (the session `cluster` of the other tests has no node), and the node is stopped
before the rest of the suite runs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devcluster import checkpoints, tiny
from devcluster import node as real
from devcluster.cluster import REPO, Cluster, ensure_binary
from devcluster.fleet import helm_install
from devcluster.rest import ApiError
from devcluster.waiting import wait_for
from examples.checkpoints import pod_uri

RELEASE = "hotswap"
# The e2e runtime image: the runtime image plus the tiny model (devcluster/tiny.py).
E2E_SETS = (
    f"runtime.image.repository={real.TEST_RUNTIME_IMAGE.rsplit(':', 1)[0]}",
    f"runtime.image.tag={real.TEST_RUNTIME_IMAGE.rsplit(':', 1)[1]}",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    """A control plane whose API server pods reach through the `kubernetes` Service."""
    with Cluster(ensure_binary(), node_ip=real.NODE_IP) as running:
        yield running


@pytest.fixture(scope="package")
def node(cluster: Cluster) -> Iterator[real.RealNode]:
    """The real node, with the operator, runtime and e2e runtime images in containerd."""
    began = time.monotonic()
    real.ensure_binaries()
    real.ensure_images()
    built = time.monotonic()
    with real.RealNode(cluster) as running:
        took = running.load_images(
            [real.OPERATOR_IMAGE, real.RUNTIME_IMAGE, real.TEST_RUNTIME_IMAGE]
        )
        print(
            f"\nreal node: binaries and images checked in {built - began:.0f}s, node Ready in "
            f"{running.started_in:.0f}s, images into containerd in {took:.0f}s"
        )
        yield running


@pytest.fixture(scope="module")
def installed(
    cluster: Cluster, node: real.RealNode, helm_bin: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A namespace with the chart installed by helm, the operator watching only it.

    The operator runs as a container on the real node under the chart's ServiceAccount.
    Yields the namespace; deletes it (and so every pod in it) afterwards.
    """
    stem = re.sub(r"[^a-z0-9]+", "-", request.module.__name__.split(".")[-1].lower())
    namespace = f"{stem.strip('-')[:30]}-{uuid.uuid4().hex[:6]}"
    extra = getattr(request.module, "HELM_SETS", ())  # a module's own chart values
    helm_install(
        cluster,
        helm_bin,
        RELEASE,
        namespace,
        f"watchNamespaces={{{namespace}}}",
        *E2E_SETS,
        *extra,
    )
    client = cluster.rest()
    wait_for(
        lambda: any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for p in client.get(
                f"/api/v1/namespaces/{namespace}/pods",
                {"labelSelector": "app.kubernetes.io/name=hotswap-operator"},
            )["items"]
            for c in p.get("status", {}).get("conditions", [])
        ),
        timeout=120,
        what=f"operator pod Ready in {namespace}",
    )
    failed_before = request.session.testsfailed
    yield namespace
    if request.session.testsfailed > failed_before:
        _print_logs(cluster, node, namespace)
    try:
        client.delete(f"/api/v1/namespaces/{namespace}")
    except ApiError as err:
        if err.status != 404:
            raise


def _print_logs(cluster: Cluster, node: real.RealNode, namespace: str, lines: int = 40) -> None:
    """On failure: the tail of every pod's log in the namespace (operator first, through
    `kubectl logs`), and the whole logs kept under .cache/e2e-logs/<namespace>/."""
    pods = cluster.rest().get(f"/api/v1/namespaces/{namespace}/pods")["items"]
    names = sorted((p["metadata"]["name"] for p in pods), key=lambda n: not n.startswith(RELEASE))
    keep = REPO / ".cache" / "e2e-logs" / namespace
    for name in names:
        text = node.logs_of(namespace, name)
        keep.mkdir(parents=True, exist_ok=True)
        (keep / f"{name}.log").write_text(text)
        tail = "\n".join(text.splitlines()[-lines:])
        print(f"\n----- {namespace}/{name} (last {lines} lines) -----\n{tail}")
    _keep_node_state(cluster, node, namespace, keep)
    print(f"\nfull pod logs, events, EndpointSlices, node logs and NAT rules: {keep}")


def _keep_node_state(cluster: Cluster, node: real.RealNode, namespace: str, keep: Path) -> None:
    """What explains traffic failures that pod logs do not: the namespace's events, pods
    and EndpointSlices, the node's component logs and kube-proxy's NAT rules."""
    keep.mkdir(parents=True, exist_ok=True)
    kinds = "events,pods,endpointslices,services"
    state = cluster.kubectl("get", kinds, "-n", namespace, "-o", "yaml", check=False)
    (keep / "state.yaml").write_text(state.stdout + state.stderr)
    for log in node.logs.glob("*.log"):
        shutil.copyfile(log, keep / f"node-{log.name}")
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True)
    (keep / "iptables-nat.txt").write_text(nat.stdout + nat.stderr)


@pytest.fixture(scope="module")
def alice(cluster: Cluster, installed: str) -> Path:
    """A kubeconfig for user alice, bound to the plugin's documented ClusterRole
    (examples/kubectl-hotswap-rbac.yaml) in the module's namespace only."""
    cluster.kubectl("apply", "-f", str(REPO / "examples" / "kubectl-hotswap-rbac.yaml"))
    return cluster.bound_user("alice", installed, "hotswap-kubectl")


@pytest.fixture(scope="module")
def files(request: pytest.FixtureRequest) -> Iterator[dict[str, dict[str, Any]]]:
    """The tiny model's checkpoints "v1" and "v2" (seeds 1 and 2), each {uri, sha256},
    in a folder of the module's own that the runtime pods read; removed after the module.
    Modules that need other checkpoints define their own `files`."""
    stem = request.module.__name__.split(".")[-1].removeprefix("test_")
    folder = checkpoints.local_folder(stem)
    out = {}
    try:
        for seed in (1, 2):
            path = folder / f"v{seed}.safetensors"
            out[f"v{seed}"] = {
                "uri": pod_uri(path),
                "sha256": checkpoints.save(tiny.weights(seed), path),
            }
        yield out
    finally:
        shutil.rmtree(folder, ignore_errors=True)
