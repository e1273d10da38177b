"""Runtime pod settings reach the pods the kubelet runs, and the pods still serve.

One ModelDeployment (2 replicas of the tiny test model) sets an image pull secret,
node affinity the node satisfies plus a preferred pod anti-affinity, a topology spread
constraint, a priority class, pod labels and annotations, ServiceAccount annotations
(workload identity) and a PodDisruptionBudget. The test reads the Pod objects bound
to the real node (what its kubelet runs), their ServiceAccount and the budget (whose
status the disruption controller computes from the pods), and waits for every pod to
serve revision 1 and be Ready.
"""

from __future__ import annotations

import base64
import json
import shutil
import uuid
from collections.abc import Iterator

import pytest

from devcluster import checkpoints, tiny
from devcluster import node as real
from devcluster.fleet import Fleet, cpu_deployment
from devcluster.rest import ApiError
from devcluster.waiting import wait_for
from examples.checkpoints import pod_uri

NAME = "placed"
REPLICAS = 2
ROLE = {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/models"}
AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/hostname",
                            "operator": "In",
                            "values": [real.NODE_NAME],
                        }
                    ]
                }
            ]
        }
    },
    "podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 10,
                "podAffinityTerm": {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": {"hotswap.dev/model-deployment": NAME}},
                },
            }
        ]
    },
}
SPREAD = [
    {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule"}
]


@pytest.fixture(scope="module")
def priority_class(cluster) -> Iterator[str]:
    name = f"hotswap-e2e-{uuid.uuid4().hex[:6]}"
    path = "/apis/scheduling.k8s.io/v1/priorityclasses"
    cluster.rest().post(path, {"metadata": {"name": name}, "value": 1000})
    yield name
    try:
        cluster.rest().delete(f"{path}/{name}")
    except ApiError as err:
        if err.status != 404:
            raise


@pytest.fixture(scope="module")
def fleet(cluster, node, installed, priority_class) -> Iterator[Fleet]:
    folder = checkpoints.local_folder("placed")
    path = folder / "v1.safetensors"
    sha = checkpoints.save(tiny.weights(1), path)
    config = base64.b64encode(json.dumps({"auths": {}}).encode()).decode()
    cluster.rest().post(
        f"/api/v1/namespaces/{installed}/secrets",
        {
            "metadata": {"name": "registry"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": config},
        },
    )
    settings = {
        "imagePullSecrets": [{"name": "registry"}],
        "priorityClassName": priority_class,
        "affinity": AFFINITY,
        "topologySpreadConstraints": SPREAD,
        "podMetadata": {
            "labels": {"team": "vision"},
            "annotations": {"example.com/owner": "ml-platform"},
        },
        "serviceAccount": {"annotations": ROLE},
        "podDisruptionBudget": {"enabled": True, "maxUnavailable": 1},
    }
    checkpoint = {"uri": pod_uri(path), "sha256": sha}
    md = cpu_deployment(
        NAME, REPLICAS, tiny.ARCHITECTURE, [tiny.FEATURES], checkpoint, runtime=settings
    )
    yield Fleet(cluster, installed, NAME).deploy(md, timeout=300)
    shutil.rmtree(folder, ignore_errors=True)


def test_pod_settings_reach_the_pods_the_kubelet_runs(fleet, priority_class):
    pods = fleet.pods()
    assert len(pods) == REPLICAS
    for pod in pods:
        spec, meta = pod["spec"], pod["metadata"]
        assert spec["nodeName"] == real.NODE_NAME and pod["status"]["phase"] == "Running"
        assert spec["imagePullSecrets"] == [{"name": "registry"}]
        assert spec["priorityClassName"] == priority_class and spec["priority"] == 1000
        assert spec["affinity"] == AFFINITY
        (constraint,) = spec["topologySpreadConstraints"]
        assert constraint["whenUnsatisfiable"] == "DoNotSchedule"
        assert constraint["labelSelector"]["matchLabels"]["hotswap.dev/model-deployment"] == NAME
        assert meta["labels"]["team"] == "vision"
        assert meta["labels"]["hotswap.dev/model-deployment"] == NAME  # the operator's kept
        assert meta["annotations"]["example.com/owner"] == "ml-platform"
        assert "hotswap.dev/serviceaccount-annotations" in meta["annotations"]
        assert spec["serviceAccountName"] == f"{NAME}-runtime"
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready["Ready"] == "True"
    account = fleet.client.get(
        f"/api/v1/namespaces/{fleet.namespace}/serviceaccounts/{NAME}-runtime"
    )
    assert account["metadata"]["annotations"] == ROLE


def test_the_budget_counts_the_pods_and_goes_when_turned_off(fleet):
    path = f"/apis/policy/v1/namespaces/{fleet.namespace}/poddisruptionbudgets/{NAME}"
    budget = wait_for(
        lambda: (
            (b := fleet.client.get(path)).get("status", {}).get("currentHealthy") == REPLICAS and b
        ),
        timeout=60,
        what=f"PodDisruptionBudget {NAME} counting {REPLICAS} healthy pods",
    )
    assert budget["status"]["disruptionsAllowed"] == 1
    fleet.patch_spec({"runtime": {"podDisruptionBudget": {"enabled": False}}})

    def gone() -> bool:
        try:
            fleet.client.get(path)
        except ApiError as err:
            return err.status == 404
        return False

    wait_for(gone, timeout=60, what=f"PodDisruptionBudget {NAME} deleted")
    print("\n$ kubectl get modeldeployments\n" + fleet.kubectl_get().rstrip())
