"""The operator sees through a cluster DNS outage.

Two operator replicas (the chart's default) and three runtime pods on the real node.
The cluster DNS stops (devcluster/clusterdns.py, the node's CoreDNS) and stays down;
both operator replicas are deleted, so the Deployment's new ones log in, list and
watch while no name resolves. A new checkpoint must still roll out: the ModelDeployment
settles (phase Ready) with every pod on revision 2. The operator's watches once reached
the API server by `kubernetes.default.svc` (kopf's in-cluster login) while its Lease
went by address: the leader renewed its Lease, stayed healthy and saw nothing, and the
ModelDeployment stayed Progressing 0/3.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import torch

from devcluster import checkpoints, tiny
from devcluster.fleet import Fleet, cpu_deployment
from devcluster.waiting import wait_for
from examples.checkpoints import pod_uri

NAME = "dnsless"
REPLICAS = 3
SHAPE = (tiny.FEATURES,)
OPERATOR = {"labelSelector": "app.kubernetes.io/name=hotswap-operator"}


@pytest.fixture(scope="module")
def files() -> Iterator[dict[str, dict[str, str]]]:
    folder = checkpoints.local_folder("dns")
    weights: dict[str, dict[str, torch.Tensor]] = {"v1": tiny.weights(1), "v2": tiny.weights(2)}
    out = {}
    for name, state in weights.items():
        path = folder / f"{name}.safetensors"
        out[name] = {"uri": pod_uri(path), "sha256": checkpoints.save(state, path)}
    yield out
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def fleet(cluster, node, installed, files) -> Fleet:
    md = cpu_deployment(NAME, REPLICAS, tiny.ARCHITECTURE, SHAPE, files["v1"])
    return Fleet(cluster, installed, NAME).deploy(md, timeout=300)


def ready_operators(client, namespace: str) -> dict[str, str]:
    """uid -> name of the operator pods that are Ready and not terminating."""
    pods = client.get(f"/api/v1/namespaces/{namespace}/pods", OPERATOR)["items"]
    return {
        p["metadata"]["uid"]: p["metadata"]["name"]
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
        and any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in p.get("status", {}).get("conditions", [])
        )
    }


def test_a_rollout_converges_while_the_cluster_dns_is_down(cluster, node, installed, fleet, files):
    client = cluster.rest()
    before = wait_for(
        lambda: (ready := ready_operators(client, installed)) and len(ready) == 2 and ready,
        timeout=120,
        what="two operator replicas Ready",
    )
    with node.dns_stopped():
        for name in before.values():
            client.delete(f"/api/v1/namespaces/{installed}/pods/{name}", {"gracePeriodSeconds": 1})
        wait_for(
            lambda: (
                len(ready := ready_operators(client, installed)) == 2
                and not set(ready) & set(before)
            ),
            timeout=180,
            what="two new operator replicas Ready without DNS",
        )
        fleet.patch_spec({"checkpoint": files["v2"]})
        status = fleet.wait_serving(2, REPLICAS, timeout=180)
        assert not node.dns_running()
    assert status["phase"] == "Ready" and status["updated"] == f"{REPLICAS}/{REPLICAS}"
