"""Runtime pods' reports in the real API server: their ModelReplicas, written the way
a pod's Reporter writes them (merge patch, or create on 404), and read the way the
operator reads them (by the ModelDeployment's label)."""

from __future__ import annotations

from typing import Any

from devcluster.rest import MERGE_PATCH, ApiError

REPLICAS = "/apis/hotswap.dev/v1alpha1/namespaces/{ns}/modelreplicas"


def replica_reports(client, ns: str, name: str = "resnet") -> dict[str, Any]:
    """Each pod's report (its ModelReplica's status), by pod name."""
    selector = {"labelSelector": f"hotswap.dev/model-deployment={name}"}
    items = client.get(REPLICAS.format(ns=ns), selector)["items"]
    return {i["metadata"]["name"]: i.get("status") or {} for i in items}


def report(client, ns: str, pod: str, status: dict[str, Any], name: str = "resnet") -> Any:
    """A pod's report, as its Reporter writes it: merge patch, or create on 404."""
    path = f"{REPLICAS.format(ns=ns)}/{pod}"
    try:
        return client.patch(path, {"status": status}, MERGE_PATCH)
    except ApiError as err:
        if err.status != 404:
            raise
    body = {
        "apiVersion": "hotswap.dev/v1alpha1",
        "kind": "ModelReplica",
        "metadata": {"name": pod, "labels": {"hotswap.dev/model-deployment": name}},
        "status": status,
    }
    return client.post(REPLICAS.format(ns=ns), body)
