"""A runtime pod may write only its own report: the chart's ValidatingAdmissionPolicy
against the real API server, with pod-bound ServiceAccount tokens as kubelet mints them,
and the runtime's real Reporter writing through it.

Without the policy, the runtime pods' Role (create and patch ModelReplicas: RBAC cannot
name an object before it exists) would let one compromised pod forge the other pods'
reports, which the operator plans rollouts from, or report into another
ModelDeployment.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devcluster.helm import template
from devcluster.rest import MERGE_PATCH, ApiError, KubeClient
from devcluster.waiting import wait_for
from hotswap_contract.wire import PodReport, PodState
from hotswap_operator import resources
from hotswap_runtime.control.reporter import Reporter

REPO = Path(__file__).resolve().parents[3]
CRDS = [REPO / "crds" / "modeldeployment.yaml", REPO / "crds" / "modelreplica.yaml"]
VAP_API = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"
API = "/apis/hotswap.dev/v1alpha1/namespaces/{ns}"
SPEC = {
    "model": {"architecture": "torchvision/resnet18", "inputShape": [3, 8, 8]},
    "checkpoint": {"uri": "file:///models/v1.safetensors", "sha256": "1" * 64},
}


@pytest.fixture(scope="module")
def policy(cluster, helm_bin):
    for crd in CRDS:
        cluster.apply_crd(crd)
    rendered = template(helm_bin, "--api-versions", VAP_API)
    docs = [
        d
        for d in rendered
        if "ValidatingAdmissionPolicy" in d["kind"]
        and d["metadata"]["name"].endswith("pod-reports")
    ]
    assert [d["kind"] for d in docs] == [
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    client = cluster.rest()
    base = "/apis/admissionregistration.k8s.io/v1"
    client.post(f"{base}/validatingadmissionpolicies", docs[0])
    client.post(f"{base}/validatingadmissionpolicybindings", docs[1])
    return docs[0]["metadata"]["name"]


def pod_token(client: KubeClient, ns: str, account: str, pod: dict | None) -> str:
    body: dict = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    if pod is not None:
        meta = pod["metadata"]
        body["spec"]["boundObjectRef"] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": meta["name"],
            "uid": meta["uid"],
        }
    created = client.post(f"/api/v1/namespaces/{ns}/serviceaccounts/{account}/token", body)
    return str(created["status"]["token"])


def replica(pod: dict, model: str = "m", owner: dict | None = None) -> dict:
    """A ModelReplica as the runtime's Reporter creates it (owner: its pod)."""
    meta = pod["metadata"]
    ref = owner or {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}
    return {
        "apiVersion": "hotswap.dev/v1alpha1",
        "kind": "ModelReplica",
        "metadata": {
            "name": meta["name"],
            "labels": {"hotswap.dev/model-deployment": model},
            "ownerReferences": [ref],
        },
        "status": {"state": "Serving", "revision": 1, "sha256": "1" * 64},
    }


@pytest.fixture
def world(cluster, policy, namespace):
    admin = cluster.rest()
    api = API.format(ns=namespace)
    md = admin.post(
        f"{api}/modeldeployments",
        {
            "apiVersion": "hotswap.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "m"},
            "spec": SPEC,
        },
    )
    owner = resources.Owner("m", namespace, md["metadata"]["uid"])
    admin.post(f"/api/v1/namespaces/{namespace}/serviceaccounts", resources.service_account(owner))
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    admin.post(f"{rbac}/roles", resources.role(owner))
    admin.post(f"{rbac}/rolebindings", resources.role_binding(owner))
    pods = {}
    for name in ("m-a", "m-b"):
        pods[name] = admin.post(
            f"/api/v1/namespaces/{namespace}/pods",
            {
                "metadata": {"name": name},
                "spec": {
                    "serviceAccountName": owner.account_name,
                    "containers": [{"name": "c", "image": "x"}],
                },
            },
        )
    clients, tokens = {}, {}
    for name, pod in pods.items():
        tokens[name] = pod_token(admin, namespace, owner.account_name, pod)
        clients[name] = KubeClient(cluster.token_kubeconfig(tokens[name], name, namespace))
    clients["unbound"] = KubeClient(
        cluster.token_kubeconfig(
            pod_token(admin, namespace, owner.account_name, None), "unbound", namespace
        )
    )
    return admin, clients, pods, tokens, f"{api}/modelreplicas"


def refused(call) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    assert caught.value.status in (403, 422), caught.value
    return caught.value


def test_a_pod_writes_its_own_report_and_nothing_else(world):
    admin, clients, pods, _, path = world
    pod_a, pod_b = clients["m-a"], clients["m-b"]

    # The policy takes a moment to be in force after creation: wait until a forged
    # report (pod a writing pod b's) is refused.
    def in_force() -> bool:
        try:
            pod_a.post(path, replica(pods["m-b"]))
        except ApiError as err:
            return err.status in (403, 422)
        admin.delete(f"{path}/m-b")
        return False

    wait_for(in_force, timeout=30, what="the report-integrity policy in force")
    pod_b.post(path, replica(pods["m-b"]))
    error = refused(lambda: pod_a.patch(f"{path}/m-b", {"status": {"state": "Failed"}}))
    assert "may write only ModelReplica m-a" in str(error)
    error = refused(lambda: pod_a.post(path, replica(pods["m-a"], model="other")))
    assert "may report only for the ModelDeployment" in str(error)
    foreign = {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "m-b",
        "uid": pods["m-b"]["metadata"]["uid"],
    }
    error = refused(lambda: pod_a.post(path, replica(pods["m-a"], owner=foreign)))
    assert "must be owned by its pod alone" in str(error)
    refused(lambda: clients["unbound"].post(path, replica(pods["m-a"])))
    pod_a.post(path, replica(pods["m-a"]))
    pod_a.patch(f"{path}/m-a", {"status": {"state": "Loading"}}, MERGE_PATCH)
    refused(  # nor may it disown its report (the garbage collector would keep it)
        lambda: pod_a.patch(f"{path}/m-a", {"metadata": {"ownerReferences": None}}, MERGE_PATCH)
    )
    assert admin.get(f"{path}/m-b")["status"]["state"] == "Serving"
    assert admin.get(f"{path}/m-a")["status"]["state"] == "Loading"


def test_the_runtime_reporter_creates_then_patches_its_report(world, cluster):
    admin, _, pods, tokens, path = world
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = admin.server
    cfg.ssl_ca_cert = str(admin.ca_path)
    cfg.api_key = {"authorization": f"Bearer {tokens['m-a']}"}
    meta = pods["m-a"]["metadata"]
    reporter = Reporter(client.ApiClient(cfg), meta["namespace"], "m", "m-a", meta["uid"])
    reporter.start()
    try:
        reporter.submit(PodReport(state=PodState.LOADING, targetRevision=1))
        wait_for(lambda: reporter.sent == 1, timeout=30, what="the first report")
        serving = PodReport(state=PodState.SERVING, revision=1, sha256="1" * 64)
        reporter.submit(serving)
        wait_for(lambda: reporter.sent == 2, timeout=30, what="the second report")
        reporter.submit(PodReport(state=PodState.SERVING, revision=1, sha256="1" * 64))
        wait_for(lambda: reporter.unchanged == 1, timeout=30, what="an equal report skipped")
        assert reporter.sent == 2
    finally:
        reporter.stop()
    stored = admin.get(f"{path}/m-a")
    assert stored["status"]["state"] == "Serving" and stored["status"]["revision"] == 1
    assert "targetRevision" not in stored["status"]  # the merge patch removed it
    assert stored["metadata"]["ownerReferences"][0]["uid"] == meta["uid"]
    # Owned by its pod: the garbage collector removes the report with the pod.
    admin.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/m-a", {"gracePeriodSeconds": 0})

    def gone() -> bool:
        try:
            admin.get(f"{path}/m-a")
        except ApiError as err:
            return err.status == 404
        return False

    wait_for(gone, timeout=60, what="the report deleted with its pod")
