"""The CRD against the real API server: CEL rules (each rejects with its message and
accepts good specs), descriptions as `kubectl explain` and the discovery OpenAPI show
them, the embedded Kubernetes schemas, the printer columns, and the pod settings a
sync writes (ServiceAccount, pod template, PodDisruptionBudget on and off)."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import yaml

from devcluster.rest import MERGE_PATCH, ApiError
from hotswap_operator import resources
from hotswap_operator.config import RuntimeDefaults
from hotswap_operator.events import EventRecorder
from hotswap_operator.kube import Kube
from hotswap_operator.spec import parse_spec
from hotswap_operator.sync import Syncer

REPO = Path(__file__).resolve().parents[3]
CRD = REPO / "crds" / "modeldeployment.yaml"
MD = "/apis/hotswap.dev/v1alpha1/namespaces/{ns}/modeldeployments"
SHA1, SHA2 = "1" * 64, "2" * 64
SPEC = {
    "replicas": 4,
    "model": {"architecture": "torchvision/resnet18", "inputShape": [3, 32, 32]},
    "checkpoint": {"uri": "file:///models/v1.safetensors", "sha256": SHA1},
    "runtime": {"device": "cpu"},
}
CPU = RuntimeDefaults.model_validate({"gpu": {"enabled": False}})
ONE = {"maxUnavailable": 1}
ROLE = {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/r"}
PDB = "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/resnet"


@pytest.fixture(scope="module")
def crd(cluster):
    cluster.apply_crd(CRD)
    return cluster


def body(spec, name="resnet"):
    return {
        "apiVersion": "hotswap.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": copy.deepcopy(spec),
    }


def create(client, ns, spec, name="resnet", dry_run=False):
    path = MD.format(ns=ns) + ("?dryRun=All" if dry_run else "")
    return client.post(path, body(spec, name))


def with_(**fields):
    return {**SPEC, **fields}


def canary(*steps, **extra):
    return {"rollout": {"strategy": "Canary", "steps": list(steps), **extra}}


BAD = [
    (canary("150%", 0), 'percentage from "1%" to "100%"'),
    (canary(0), "a pod count from 1 to 10000"),
    (canary(2, 1), "must strictly increase, pod counts before percentages"),
    (canary("50%", 1), "must strictly increase, pod counts before percentages"),
    (canary("50%", "50%"), "must strictly increase"),
    (canary(1, 5), "a pod-count step is larger than spec.replicas"),
    ({"rollout": {"steps": [1, "50%"]}}, "apply to the Canary strategy only"),
    ({"rollout": {"paused": True}}, "apply to the Canary strategy only"),
    (
        {"runtime": {"device": "cpu", "resources": {"limits": {"nvidia.com/gpu": 1}}}},
        "device is cpu but spec.runtime.resources asks for a GPU",
    ),
    (
        {"runtime": {"device": "cpu", "resources": {"requests": {"nvidia.com/mig-1g.10gb": 1}}}},
        "device is cpu but spec.runtime.resources asks for a GPU",
    ),
    (
        {
            "validation": {
                "input": {"uri": "file:///models/x", "sha256": SHA2},
                "expected": {"uri": "file:///models/y", "sha256": SHA2},
            }
        },
        "expected is the same file as spec.validation.input",
    ),
    (
        {"runtime": {"podMetadata": {"labels": {"app.kubernetes.io/name": "mine"}}}},
        "sets a label the operator owns",
    ),
    (
        {"runtime": {"podMetadata": {"labels": {"hotswap.dev/model-deployment": "other"}}}},
        "sets a label the operator owns",
    ),
    (
        {"runtime": {"podMetadata": {"labels": {"bad key!": "x"}}}},
        "not a valid Kubernetes label or annotation key",
    ),
    (
        {"runtime": {"podMetadata": {"annotations": {"hotswap.dev/x": "1"}}}},
        "annotations under hotswap.dev/ are the operator's",
    ),
    (
        {"runtime": {"serviceAccount": {"annotations": {"-x/": "1"}}}},
        "not a valid Kubernetes label or annotation key",
    ),
    (
        {"runtime": {"podDisruptionBudget": {"enabled": True, "minAvailable": 1, **ONE}}},
        "sets both minAvailable and maxUnavailable; keep one",
    ),
]


@pytest.mark.parametrize("change,message", BAD, ids=[m[:40] for _, m in BAD])
def test_each_cel_rule_rejects_a_bad_spec_with_its_message(crd, namespace, change, message):
    with pytest.raises(ApiError) as refused:
        create(crd.rest(), namespace, with_(**change), dry_run=True)
    assert refused.value.status == 422
    assert message in str(refused.value)


GOOD = [
    canary(1, "50%", "100%"),
    canary(1, 2, 4),
    canary("25%", "100%", paused=True),
    {"rollout": {"strategy": "AllAtOnce"}},
    {"runtime": {"device": "auto", "resources": {"limits": {"nvidia.com/gpu": 1}}}},
    {"runtime": {"device": "cuda", "resources": {"limits": {"nvidia.com/mig-1g.10gb": 1}}}},
    {
        "runtime": {
            "device": "cpu",
            "imagePullSecrets": [{"name": "registry"}],
            "priorityClassName": "inference",
            "affinity": {
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 50,
                            "podAffinityTerm": {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": {"a": "b"}},
                            },
                        }
                    ]
                }
            },
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}
            ],
            "podMetadata": {
                "labels": {"team": "vision", "example.com/tier": "gold"},
                "annotations": {"prometheus.io/scrape": "true"},
            },
            "serviceAccount": {"annotations": ROLE},
            "podDisruptionBudget": {"enabled": True, "maxUnavailable": "25%"},
        }
    },
]


@pytest.mark.parametrize("change", GOOD)
def test_good_specs_are_accepted(crd, namespace, change):
    created = create(crd.rest(), namespace, with_(**change), dry_run=True)
    assert created["spec"]["checkpoint"] == SPEC["checkpoint"]


def test_scaling_below_a_count_step_is_allowed(crd, namespace):
    """The replicas-vs-steps rule checks steps when they are written, never a scale:
    an autoscaler or `kubectl scale` must not be refused (the operator caps the step)."""
    client = crd.rest()
    create(client, namespace, with_(**canary(1, 3, "100%")))
    crd.kubectl("scale", "-n", namespace, "modeldeployment/resnet", "--replicas=2")
    assert client.get(f"{MD.format(ns=namespace)}/resnet")["spec"]["replicas"] == 2
    with pytest.raises(ApiError, match=r"larger than spec\.replicas"):
        client.patch(
            f"{MD.format(ns=namespace)}/resnet",
            {"spec": {"rollout": {"steps": [1, 3, 4]}}},
            MERGE_PATCH,
        )


def undescribed(schema, path=""):
    for key, child in (schema.get("properties") or {}).items():
        where = f"{path}.{key}"
        if not child.get("description") and where != ".metadata":
            yield where
        yield from undescribed(child, where)
    for nested in ("items", "additionalProperties"):
        if isinstance(schema.get(nested), dict):
            yield from undescribed(schema[nested], f"{path}[]")


def test_the_published_openapi_describes_every_field(crd):
    """What `kubectl explain` reads: the API server's OpenAPI v3 for the group."""
    doc = crd.rest().get("/openapi/v3/apis/hotswap.dev/v1alpha1")
    schema = doc["components"]["schemas"]["dev.hotswap.v1alpha1.ModelDeployment"]
    assert list(undescribed(schema)) == []
    affinity = schema["properties"]["spec"]["properties"]["runtime"]["properties"]["affinity"]
    assert "podAntiAffinity" in affinity["properties"]


@pytest.mark.parametrize(
    "path,words",
    [
        ("modeldeployment.spec.rollout.steps", "strictly increasing"),
        ("modeldeployment.spec.runtime.podMetadata", "merged key by key"),
        ("modeldeployment.spec.runtime.serviceAccount.annotations", "IRSA"),
        ("modeldeployment.spec.runtime.affinity.nodeAffinity", "node affinity scheduling"),
        ("md.spec.runtime.topologySpreadConstraints.whenUnsatisfiable", "ScheduleAnyway"),
        ("modeldeployment.status.serving", "ready pods"),
    ],
)
def test_kubectl_explain_prints_the_descriptions(crd, path, words):
    out = crd.kubectl("explain", path).stdout
    assert words in " ".join(out.split())
    assert "<no description>" not in out


def test_the_embedded_kubernetes_schemas_are_the_api_servers(crd):
    script = REPO / "scripts" / "crd_k8s_types.py"
    spec = importlib.util.spec_from_file_location("crd_k8s_types", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    schemas = crd.rest().get("/openapi/v3/api/v1")["components"]["schemas"]
    text = CRD.read_text()
    assert module.render(text, schemas) == text, "run scripts/crd_k8s_types.py"
    assert "# BEGIN k8s Affinity" in text and "# BEGIN k8s TopologySpreadConstraint" in text


def sync(crd, ns, applied=None):
    kube = Kube(crd.api_client())
    return Syncer(kube, CPU, EventRecorder(kube, resources.MANAGER)).sync(ns, "resnet", [], applied)


def test_kubectl_get_shows_serving_beside_latest(crd, namespace):
    """A failed revision 2 never shows as what the pods serve: SERVING 1, LATEST 2."""
    client = crd.rest()
    create(client, namespace, SPEC)
    sync(crd, namespace)
    path = f"{MD.format(ns=namespace)}/resnet"
    client.patch(path, {"spec": {"checkpoint": {"uri": "file:///models/v2", "sha256": SHA2}}})
    sync(crd, namespace)
    client.patch(f"{path}/status", {"status": {"serving": "1", "phase": "Degraded"}}, MERGE_PATCH)
    out = crd.kubectl("get", "-n", namespace, "modeldeployments").stdout
    header, row = out.splitlines()
    assert header.split() == ["NAME", "SERVING", "LATEST", "UPDATED", "READY", "PHASE", "AGE"]
    assert row.split()[:3] == ["resnet", "1", "2"] and "Degraded" in row
    wide = crd.kubectl("get", "-n", namespace, "modeldeployments", "-o", "wide").stdout
    assert "CHECKPOINT" in wide.splitlines()[0] and SHA2[:12] in wide


def test_pod_settings_reach_the_children_and_the_budget_goes_when_turned_off(crd, namespace):
    client = crd.rest()
    runtime = {
        "device": "cpu",
        "imagePullSecrets": [{"name": "registry"}],
        "podMetadata": {"labels": {"team": "vision"}},
        "serviceAccount": {"annotations": {"iam.gke.io/gcp-service-account": "a@b.iam"}},
        "podDisruptionBudget": {"enabled": True, "minAvailable": 1},
    }
    create(client, namespace, with_(runtime=runtime))
    applied = sync(crd, namespace).applied
    pdb = client.get(PDB.format(ns=namespace))
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    account = client.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/resnet-runtime")
    assert account["metadata"]["annotations"] == runtime["serviceAccount"]["annotations"]
    deployment = client.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/resnet")
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "vision"
    assert template["spec"]["imagePullSecrets"] == [{"name": "registry"}]
    off = {**runtime, "podDisruptionBudget": {"enabled": False}, "serviceAccount": None}
    client.patch(f"{MD.format(ns=namespace)}/resnet", {"spec": {"runtime": off}})
    sync(crd, namespace, applied)
    with pytest.raises(ApiError) as gone:
        client.get(PDB.format(ns=namespace))
    assert gone.value.status == 404
    account = client.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/resnet-runtime")
    assert not account["metadata"].get("annotations")  # server-side apply removed them


def test_a_budget_it_did_not_create_is_never_deleted(crd, namespace):
    client = crd.rest()
    client.post(
        f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets",
        {"metadata": {"name": "resnet"}, "spec": {"maxUnavailable": 1, "selector": {}}},
    )
    create(client, namespace, SPEC)
    sync(crd, namespace)
    assert client.get(PDB.format(ns=namespace))["metadata"].get("ownerReferences") is None


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("resnet18*.yaml")))
def test_every_example_is_accepted_by_the_api_server_and_the_operator(crd, namespace, example):
    manifest = yaml.safe_load(example.read_text())
    if manifest.get("kind") != "ModelDeployment":
        return  # a patch
    created = crd.rest().post(f"{MD.format(ns=namespace)}?dryRun=All", manifest)
    parse_spec(created["spec"], name=created["metadata"]["name"])
