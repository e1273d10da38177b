"""oci:// checkpoints on the real node: a ModelDeployment serving an OCI artifact swaps,
under load and without a pod restart, to weights pushed as another OCI artifact to a
registry outside the cluster (the CNCF distribution registry, ``make registry``, on the
node's bridge address, TLS and token auth), pulled with a
``kubernetes.io/dockerconfigjson`` Secret; not a request fails meanwhile.

The registry's token server is the registry's choice of address, checked like a
redirect target: the chart's ``policy.fetchAllowedNetworks`` allows the node address
for it. The pods trust the test CA through ``SSL_CERT_FILE`` (allowed by
``policy.runtimeEnv``), the CA file beside the checkpoints in the pods' /models.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster import checkpoints, oci_registry, tiny
from devcluster.fleet import Fleet, cpu_deployment
from devcluster.node import NODE_IP
from examples.checkpoints import pod_uri

NAME = "oci"
REPLICAS = 2
SHAPE = (tiny.FEATURES,)
SECRET = "registry-pull"
HELM_SETS = (
    f"policy.fetchAllowedNetworks={{{NODE_IP}/32}}",
    "policy.runtimeEnv={HOTSWAP_TORCH_THREADS,HOTSWAP_LOG_LEVEL,SSL_CERT_FILE}",
)


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    made = checkpoints.local_folder("oci")
    yield made
    shutil.rmtree(made, ignore_errors=True)


@pytest.fixture(scope="module")
def registry(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    with oci_registry.serve(tmp_path_factory.mktemp("registry"), host=NODE_IP) as running:
        shutil.copy(running.ca, folder / "registry-ca.crt")
        (folder / "registry-ca.crt").chmod(0o644)
        yield running


def test_a_swap_to_an_oci_artifact_under_load(cluster, installed, folder, registry) -> None:
    assert isinstance(registry, oci_registry.Registry)
    pushed = {}
    for version in (1, 2):
        path = folder / f"push-v{version}" / "model.safetensors"
        sha = checkpoints.save(tiny.weights(version), path)
        digest = registry.push("models/tiny", f"v{version}", {"model.safetensors": path})
        uri = f"oci://{registry.host}/models/tiny@{digest}/model.safetensors"
        pushed[version] = {"uri": uri, "sha256": sha, "secretRef": {"name": SECRET}}
    config = base64.b64encode(registry.docker_config().encode()).decode()
    cluster.rest().post(
        f"/api/v1/namespaces/{installed}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": config},
        },
    )
    ca = pod_uri(folder / "registry-ca.crt").removeprefix("file://")
    env = [
        {"name": "HOTSWAP_TORCH_THREADS", "value": "1"},
        {"name": "SSL_CERT_FILE", "value": ca},
    ]
    # the Secret is named from the start: changing a secretRef (a mount) rolls the pods
    md = cpu_deployment(NAME, REPLICAS, tiny.ARCHITECTURE, SHAPE, pushed[1], runtime={"env": env})
    fleet = Fleet(cluster, installed, NAME).deploy(md, timeout=300)
    pods = {p["metadata"]["uid"] for p in fleet.pods()}
    with fleet.load(SHAPE) as load:
        fleet.patch_spec({"checkpoint": pushed[2]})
        fleet.wait_serving(2, REPLICAS)
        load.all_answer("2")
    assert {p["metadata"]["uid"] for p in fleet.pods()} == pods  # swapped, not restarted
    assert not load.failures, load.summary()
    assert registry.issued, "no pod asked the token server"
    print(f"\n{load.total} requests during the swap to {pushed[2]['uri']}, 0 failed")
