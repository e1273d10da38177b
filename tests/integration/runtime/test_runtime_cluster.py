"""The runtime against a real kube-apiserver: API watch of the ConfigMap (no mounted
file at all) and the status report landing in the pod's own ModelReplica."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devcluster import checkpoints as ck
from devcluster import tiny
from devcluster.cluster import Cluster
from tests.fixtures_runtime.server import REPO, running, wait_for

NAME = "tiny"
POD = "tiny-7d9f-abcde"


def configmap(namespace: str, text: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{NAME}-model", "namespace": namespace},
            "data": {"model.json": text},
        }
    )


def deployment(namespace: str, uri: str, sha256: str) -> str:
    return json.dumps(
        {
            "apiVersion": "hotswap.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": namespace},
            "spec": {
                "replicas": 1,
                "model": {"architecture": tiny.ARCHITECTURE, "inputShape": [tiny.FEATURES]},
                "checkpoint": {"uri": uri, "sha256": sha256},
            },
        }
    )


def pod_status(cluster: Cluster, namespace: str) -> dict[str, Any]:
    """The pod's report: the status of the ModelReplica named after it ({} before it)."""
    out = cluster.kubectl(
        "get", "modelreplicas.hotswap.dev", "-n", namespace, "-o", "json", "--ignore-not-found"
    )
    items = json.loads(out.stdout or '{"items": []}').get("items", [])
    found = [i for i in items if i["metadata"]["name"] == POD]
    entry: dict[str, Any] = found[0].get("status", {}) if found else {}
    return entry


def test_api_watch_and_status_report(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    cluster.apply_crd(REPO / "crds")
    sha = {s: ck.save(tiny.weights(s), tmp_path / f"v{s}.safetensors") for s in (1, 2)}
    uri = {s: f"file://{tmp_path}/v{s}.safetensors" for s in (1, 2)}
    cluster.kubectl("apply", "-f", "-", input=deployment(namespace, uri[1], sha[1]))
    first = ck.config(1, ck.revision(1, uri[1], sha[1]), name=NAME)
    cluster.kubectl("apply", "-f", "-", input=configmap(namespace, first))
    env = {
        "HOTSWAP_MODEL_NAME": NAME,
        "POD_NAME": POD,
        "POD_NAMESPACE": namespace,
        "KUBECONFIG": str(cluster.kubeconfig),
        "HOTSWAP_CONFIGMAP": f"{NAME}-model",
    }
    with running(tmp_path, env, model=NAME) as runtime:  # ready only through the API watch
        report = wait_for(
            lambda: (s := pod_status(cluster, namespace)).get("revision") == 1 and s,
            30,
            "the pod report of revision 1",
        )
        assert report["state"] == "Serving" and report["sha256"] == sha[1]
        second = ck.config(2, ck.revision(2, uri[2], sha[2]), name=NAME)
        cluster.kubectl("apply", "-f", "-", input=configmap(namespace, second))
        runtime.wait_version(2, timeout=30)
        report = wait_for(
            lambda: (s := pod_status(cluster, namespace)).get("revision") == 2 and s,
            30,
            "the pod report of revision 2",
        )
    assert report["state"] == "Serving"
    assert report["sha256"] == sha[2] and report["targetSha256"] == sha[2]
    assert report["configGeneration"] == 2
    assert set(report["swapSeconds"]) == {"fetch", "parse", "load", "validate", "activate"}
    assert report["device"] == "cpu" and "torch" in report["env"]
    assert report["loadedAt"].endswith("Z")
