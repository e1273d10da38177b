"""The real API server: CRD schema validation, RBAC on ServiceAccount tokens, and the
garbage collector."""

from __future__ import annotations

import json

import pytest

from devcluster.cluster import Cluster
from devcluster.rest import ApiError, KubeClient
from devcluster.waiting import wait_for

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.hotswap.dev"},
    "spec": {
        "group": "test.hotswap.dev",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {"size": {"type": "integer", "minimum": 1}},
                            }
                        },
                    }
                },
            }
        ],
    },
}


def widget(name: str, size: object) -> str:
    doc = {
        "apiVersion": "test.hotswap.dev/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": size},
    }
    return json.dumps(doc)


def test_crd_schema_rejects_a_bad_object(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(CRD))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.test.hotswap.dev", "--timeout=30s"
    )
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=widget("good", 3))
    bad = cluster.kubectl("-n", namespace, "apply", "-f", "-", input=widget("bad", 0), check=False)
    assert bad.returncode != 0
    assert "spec.size" in bad.stderr and "should be greater than or equal to 1" in bad.stderr
    wrong_type = cluster.kubectl(
        "-n", namespace, "apply", "-f", "-", input=widget("worse", "big"), check=False
    )
    assert wrong_type.returncode != 0 and "spec.size" in wrong_type.stderr
    names = cluster.kubectl("-n", namespace, "get", "widgets", "-o", "name").stdout.split()
    assert names == ["widget.test.hotswap.dev/good"]


def sa_token(cluster: Cluster, namespace: str, name: str) -> str:
    admin = cluster.rest()
    admin.post(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": name}})
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
    return str(admin.post(path, body)["status"]["token"])


def test_service_account_needs_a_role_binding(cluster: Cluster, namespace: str) -> None:
    token = sa_token(cluster, namespace, "reader")
    client = KubeClient(cluster.token_kubeconfig(token, f"reader-{namespace}", namespace))
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    with pytest.raises(ApiError) as denied:
        client.get(path)
    assert denied.value.status == 403
    assert f"system:serviceaccount:{namespace}:reader" in str(denied.value)

    rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/" + namespace
    admin = cluster.rest()
    rule = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}
    admin.post(f"{rbac}/roles", {"metadata": {"name": "read-cm"}, "rules": [rule]})
    binding = {
        "metadata": {"name": "reader-read-cm"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-cm"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
    }
    admin.post(f"{rbac}/rolebindings", binding)
    listed = wait_for(lambda: client.get(path), timeout=15, what="list after RoleBinding")
    assert listed["kind"] == "ConfigMapList"
    with pytest.raises(ApiError) as still_denied:  # only what the Role allows
        client.get(f"/api/v1/namespaces/{namespace}/secrets")
    assert still_denied.value.status == 403


def test_deleting_an_owner_collects_its_children(cluster: Cluster, namespace: str) -> None:
    admin = cluster.rest()
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    owner = admin.post(base, {"metadata": {"name": "owner"}, "data": {"k": "v"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner"}
    ref["uid"] = owner["metadata"]["uid"]
    for i in range(3):
        admin.post(base, {"metadata": {"name": f"child-{i}", "ownerReferences": [ref]}})
    admin.post(base, {"metadata": {"name": "bystander"}})
    admin.delete(f"{base}/owner", {"propagationPolicy": "Background"})

    def remaining() -> list[str] | None:
        names = [cm["metadata"]["name"] for cm in admin.get(base)["items"]]
        return names if not any(n.startswith("child-") for n in names) else None

    names = wait_for(remaining, timeout=30, what="garbage collection of child-*")
    assert "bystander" in names and "owner" not in names


def test_api_client_and_kubectl_speak_as_admin(cluster: Cluster, namespace: str) -> None:
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client())
    names = [ns.metadata.name for ns in core.list_namespace().items]
    assert namespace in names and "kube-system" in names
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == cluster.version()
    assert cluster.kubectl("auth", "can-i", "*", "*").stdout.strip() == "yes"
