"""A runtime pod may write only its own report: the chart's ValidatingAdmissionPolicy
against the real API server, with pod-bound ServiceAccount tokens as kubelet mints them.

Without the policy, the runtime pods' Role (patch on their ModelDeployment's status)
lets one compromised pod rewrite status.stable, status.candidate and the other pods'
reports, which the operator plans rollouts from.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from hotswap_operator import resources

from tests.harness.rest import MERGE_PATCH, ApiError, KubeClient
from tests.harness.waiting import wait_for

REPO = Path(__file__).resolve().parents[3]
CRD = REPO / "crds" / "modeldeployment.yaml"
CHART = REPO / "charts" / "hotswap"
VAP_API = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"
MD = "/apis/hotswap.dev/v1alpha1/namespaces/{ns}/modeldeployments/{name}"
SPEC = {
    "model": {"architecture": "torchvision/resnet18", "inputShape": [3, 8, 8]},
    "checkpoint": {"uri": "file:///models/v1.safetensors", "sha256": "1" * 64},
}


@pytest.fixture(scope="module")
def policy(cluster, helm_bin):
    cluster.apply_crd(CRD)
    rendered = subprocess.run(
        [str(helm_bin), "template", "hs", str(CHART), "--api-versions", VAP_API],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs = [
        d for d in yaml.safe_load_all(rendered) if d and "ValidatingAdmissionPolicy" in d["kind"]
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


@pytest.fixture
def world(cluster, policy, namespace):
    admin = cluster.rest()
    md = admin.post(
        f"/apis/hotswap.dev/v1alpha1/namespaces/{namespace}/modeldeployments",
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
    path = MD.format(ns=namespace, name="m") + "/status"
    operator_fields = {
        "phase": "Ready",
        "stable": {"revision": 1, "sha256": "1" * 64},
        "pods": {"m-b": {"state": "Serving", "revision": 1, "sha256": "1" * 64}},
    }
    admin.patch(path, {"status": operator_fields})
    clients = {}
    for name, pod in pods.items():
        token = pod_token(admin, namespace, owner.account_name, pod)
        clients[name] = KubeClient(cluster.token_kubeconfig(token, name, namespace))
    clients["unbound"] = KubeClient(
        cluster.token_kubeconfig(
            pod_token(admin, namespace, owner.account_name, None), "unbound", namespace
        )
    )
    return admin, clients, path


def refused(client: KubeClient, path: str, status: dict) -> ApiError:
    with pytest.raises(ApiError) as caught:
        client.patch(path, {"status": status}, MERGE_PATCH)
    assert caught.value.status in (403, 422), caught.value
    return caught.value


def test_a_pod_writes_its_own_report_and_nothing_else(world):
    admin, clients, path = world
    pod_a = clients["m-a"]
    # The policy takes a moment to be in force after creation: wait until a forged
    # write is refused (the forged value is one the operator never writes).
    forged = {"pods": {"m-b": {"state": "Failed", "message": "forged"}}}

    def in_force() -> bool:
        try:
            pod_a.patch(path, {"status": forged}, MERGE_PATCH)
        except ApiError as err:
            return err.status in (403, 422)
        admin.patch(path, {"status": {"pods": {"m-b": {"state": "Serving", "message": None}}}})
        return False

    wait_for(in_force, timeout=30, what="the status-integrity policy in force")
    own = {"pods": {"m-a": {"state": "Serving", "revision": 1, "sha256": "1" * 64}}}
    pod_a.patch(path, {"status": own}, MERGE_PATCH)
    error = refused(pod_a, path, forged)
    assert "may write only status.pods.m-a" in str(error)
    refused(pod_a, path, {"stable": {"revision": 9, "sha256": "9" * 64}})
    refused(pod_a, path, {"phase": "Degraded"})
    refused(pod_a, path, {"pods": {"m-b": None}})
    refused(pod_a, path, {"pods": {"m-c": {"state": "Serving"}}})
    refused(clients["unbound"], path, own)
    status = admin.get(path.removesuffix("/status"))["status"]
    assert status["stable"] == {"revision": 1, "sha256": "1" * 64}
    assert status["phase"] == "Ready"
    assert status["pods"]["m-b"] == {"state": "Serving", "revision": 1, "sha256": "1" * 64}
    assert status["pods"]["m-a"]["state"] == "Serving"
    clients["m-b"].patch(path, {"status": {"pods": {"m-b": {"state": "Loading"}}}}, MERGE_PATCH)


def test_the_policy_lists_every_status_field_but_pods(policy):
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    fields = set(version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"])
    template = (CHART / "templates" / "statusintegrity.yaml").read_text()
    listed = template.split('$fields := list "', 1)[1].split(" -}}", 1)[0]
    assert set(listed.replace('"', "").split()) == fields - {"pods"}
