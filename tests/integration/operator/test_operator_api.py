"""The sync against the real API server (no kubelet, no helm, no kopf).

The CRD is applied as-is, so the schema's validation, pruning and subresources are
the real ones; pods are created by the real controller-manager (they stay Pending
without a kubelet, which is all the aggregation needs). The tests hand the sync the
pods a watch cache would hold (listed here); the operator's own watch is kopf's.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from refused_events import allow_events, refuse_events
from replicas import replica_reports, report

from devcluster.cluster import KubectlError
from devcluster.rest import MERGE_PATCH, ApiError
from devcluster.waiting import wait_for
from hotswap_operator import resources
from hotswap_operator.config import RuntimeDefaults
from hotswap_operator.context import PodInfo
from hotswap_operator.events import EventRecorder
from hotswap_operator.kube import ChildConflictError, ConflictError, Kube
from hotswap_operator.spec import SpecError
from hotswap_operator.sync import Syncer, SyncResult

REPO = Path(__file__).resolve().parents[3]
CRD = REPO / "crds"  # both CRDs: ModelDeployment and ModelReplica
MD = "/apis/hotswap.dev/v1alpha1/namespaces/{ns}/modeldeployments"
SHA1, SHA2 = "1" * 64, "2" * 64
SPEC = {
    "replicas": 2,
    "model": {
        "architecture": "torchvision/resnet18",
        "args": {"num_classes": 10},
        "inputShape": [3, 32, 32],
    },
    "checkpoint": {"uri": "file:///models/v1.safetensors", "sha256": SHA1},
    "runtime": {"device": "cpu"},
}
CHILDREN = [
    ("configmaps", "resnet-model"),
    ("configmaps", "resnet-peers"),  # peers.json (these pods have no address: empty)
    ("secrets", "resnet-peer-{uid}"),  # the peer token: created, never read
    ("serviceaccounts", "resnet-runtime"),
    ("services", "resnet"),
]
GROUPED = {
    "apps/v1/deployments": "resnet",
    "rbac.authorization.k8s.io/v1/roles": "resnet-runtime",
    "rbac.authorization.k8s.io/v1/rolebindings": "resnet-runtime",
}
CPU = RuntimeDefaults.model_validate({"gpu": {"enabled": False}})


@pytest.fixture(scope="module")
def crd(cluster):
    cluster.apply_crd(CRD)
    return cluster


@pytest.fixture
def kube(crd):
    return Kube(crd.api_client())


def pods_of(client, ns, name="resnet"):
    """The pods of ModelDeployment `name`, by its selector labels."""
    selector = ",".join(f"{k}={v}" for k, v in resources.selector_labels(name).items())
    return client.get(f"/api/v1/namespaces/{ns}/pods", {"labelSelector": selector})["items"]


def live_pods(client, ns, name="resnet"):
    """The runtime pods as the operator's pod cache would hold them."""
    return [PodInfo.from_pod(p) for p in pods_of(client, ns, name)]


def wait_pods(client, ns, count=2, name="resnet"):
    """The sorted names of `name`'s pods not being deleted, once there are `count`."""

    def names():
        items = pods_of(client, ns, name)
        found = sorted(
            p["metadata"]["name"] for p in items if not p["metadata"].get("deletionTimestamp")
        )
        return len(found) == count and found

    return wait_for(names, timeout=60, what=f"{count} pods of {name} from the controller-manager")


def sync(kube, ns, name="resnet", applied=None, client=None, syncer=None) -> SyncResult:
    """One sync of ModelDeployment `name`, as a leader's worker runs it (pods and their
    reports listed here, where the controller reads its watch caches)."""
    pods = live_pods(client, ns, name) if client is not None else []
    reports = replica_reports(client, ns, name) if client is not None else {}
    syncer = syncer or Syncer(kube, CPU, EventRecorder(kube, resources.MANAGER))
    return syncer.sync(ns, name, pods, applied, reports)


def reasons(result: SyncResult) -> list[str]:
    return [e.reason.value for e in result.events]


def child_paths(client, ns):
    uid = get(client, ns)["metadata"]["uid"]
    paths = {f"/api/v1/namespaces/{ns}/{kind}/{name.format(uid=uid)}" for kind, name in CHILDREN}
    for prefix, name in GROUPED.items():
        group_version, _, plural = prefix.rpartition("/")
        paths.add(f"/apis/{group_version}/namespaces/{ns}/{plural}/{name}")
    return sorted(paths)


def create(client, ns, spec=SPEC, name="resnet"):
    body = {
        "apiVersion": "hotswap.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": copy.deepcopy(spec),
    }
    return client.post(MD.format(ns=ns), body)


def get(client, ns, name="resnet"):
    return client.get(f"{MD.format(ns=ns)}/{name}")


def versions(client, ns):
    """What a write by the operator would move: generation where the object has one
    (controllers update a Deployment's status on their own), else resourceVersion."""
    out = {}
    for path in child_paths(client, ns):
        meta = client.get(path)["metadata"]
        out[path] = meta.get("generation") or meta["resourceVersion"]
    return out


def test_sync_builds_owned_children_and_twice_changes_nothing(crd, kube, namespace):
    client = crd.rest()
    created = create(client, namespace)
    first = sync(kube, namespace)
    assert reasons(first) == ["RevisionCreated"]
    for path in child_paths(client, namespace):
        (ref,) = client.get(path)["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["uid"]) == ("ModelDeployment", created["metadata"]["uid"])
    md = get(client, namespace)
    assert md["status"]["revision"] == 1 and md["status"]["observedGeneration"] == 1
    wait_pods(client, namespace)
    sync(kube, namespace, applied=first.applied, client=client)  # counts the new pods
    md = get(client, namespace)
    assert md["status"]["replicas"] == 2
    before, md_version = versions(client, namespace), md["metadata"]["resourceVersion"]
    for applied in (first.applied, None):  # None: a new leader applies every child again
        assert reasons(sync(kube, namespace, applied=applied, client=client)) == []
        assert versions(client, namespace) == before
        assert get(client, namespace)["metadata"]["resourceVersion"] == md_version


def test_checkpoint_change_touches_only_the_config_map(crd, kube, namespace):
    client = crd.rest()
    create(client, namespace)
    applied = sync(kube, namespace).applied
    before = versions(client, namespace)
    template = client.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/resnet")
    patch = {"spec": {"checkpoint": {"uri": "file:///models/v2.safetensors", "sha256": SHA2}}}
    client.patch(f"{MD.format(ns=namespace)}/resnet", patch, MERGE_PATCH)
    (event,) = sync(kube, namespace, applied=applied).events
    assert event.message.startswith("revision 2: file:///models/v2.safetensors")
    after = versions(client, namespace)
    changed = sorted(p for p in after if after[p] != before[p])
    assert changed == [f"/api/v1/namespaces/{namespace}/configmaps/resnet-model"]
    deployment = client.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/resnet")
    assert deployment["spec"]["template"] == template["spec"]["template"]
    config = json.loads(client.get(after and changed[0])["data"]["model.json"])
    assert (config["stable"]["revision"], config["generation"]) == (2, 2)
    status = get(client, namespace)["status"]
    assert status["revision"] == 2 and status["checkpoint"] == SHA2[:12]
    assert [h["revision"] for h in status["history"]] == [1, 2]


@pytest.mark.parametrize(
    "change,field",
    [
        ({"checkpoint": {"uri": "file:///m", "sha256": "XYZ"}}, "spec.checkpoint.sha256"),
        ({"checkpoint": {"uri": "ftp://m", "sha256": SHA1}}, "spec.checkpoint.uri"),
        ({"replicas": -1}, "spec.replicas"),
        ({"rollout": {"strategy": "YOLO"}}, "spec.rollout.strategy"),
        ({"runtime": {"device": "tpu"}}, "spec.runtime.device"),
        ({"distribution": {"originConcurrency": 0}}, "spec.distribution.originConcurrency"),
        ({"distribution": {"originConcurrency": 65}}, "spec.distribution.originConcurrency"),
        ({"model": {"architecture": "resnet", "inputShape": [3]}}, "spec.model.architecture"),
    ],
)
def test_schema_refuses_invalid_specs(crd, namespace, change, field):
    with pytest.raises(ApiError) as refused:
        create(crd.rest(), namespace, {**SPEC, **change})
    assert refused.value.status == 422
    assert field in str(refused.value)


def test_schema_keeps_pod_reports_and_prunes_unknown_fields(crd, namespace):
    """A ModelReplica keeps every PodReport field; the ModelDeployment keeps no per-pod map."""
    client = crd.rest()
    create(client, namespace)
    entry = {
        "revision": 1,
        "sha256": SHA1,
        "state": "Serving",
        "targetRevision": 1,
        "targetSha256": SHA1,
        "loadedAt": "2026-01-01T00:00:00Z",
        "swapSeconds": {"fetch": 0.5, "verify": 0.1},
        "device": "cpu",
        "env": {"torch": "2.14.1"},
        "message": "swapped",
        "configGeneration": 1,
        "fetched": {"storeBytes": 7, "peerBytes": 93, "cachedBytes": 0, "peers": 2},
    }
    report(client, namespace, "pod-a", {**entry, "bogus": 1})
    assert replica_reports(client, namespace) == {"pod-a": entry}
    status = {"status": {"pods": {"pod-a": entry}, "kopf": {"x": 1}, "phase": "Pending"}}
    client.patch(f"{MD.format(ns=namespace)}/resnet/status", status, MERGE_PATCH)
    stored = get(client, namespace)["status"]
    assert "kopf" not in stored and "pods" not in stored and stored["phase"] == "Pending"
    out = crd.kubectl("get", "-n", namespace, "modelreplicas", "-o", "wide").stdout
    header, row = (re.split(r"\s{2,}", line.strip()) for line in out.splitlines())
    assert header == [
        "NAME",
        "MODEL",
        "REVISION",
        "STATE",
        "TARGET",
        "CHECKPOINT",
        "MESSAGE",
        "STORE BYTES",
        "PEER BYTES",
        "AGE",
    ]
    assert row[:6] == ["pod-a", "resnet", "1", "Serving", "1", SHA1]
    assert row[6:9] == ["swapped", "7", "93"]


def test_scale_subresource_sets_spec_replicas(crd, kube, namespace):
    client = crd.rest()
    create(client, namespace)
    applied = sync(kube, namespace).applied
    crd.kubectl("scale", "-n", namespace, "modeldeployment/resnet", "--replicas=5")
    md = get(client, namespace)
    assert md["spec"]["replicas"] == 5
    scale = client.get(f"{MD.format(ns=namespace)}/resnet/scale")
    assert scale["status"]["selector"] == (
        "app.kubernetes.io/name=hotswap-runtime,hotswap.dev/model-deployment=resnet"
    )
    sync(kube, namespace, applied=applied)  # a new generation: children applied again
    deployment = client.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/resnet")
    assert deployment["spec"]["replicas"] == 5


def test_sync_counts_real_pods_from_their_reports_and_ignores_gone_ones(crd, kube, namespace):
    client = crd.rest()
    create(client, namespace)
    applied = sync(kube, namespace).applied
    pods = wait_pods(client, namespace)
    serving = {"revision": 1, "sha256": SHA1, "state": "Serving", "targetRevision": 1}
    reports = {
        pods[0]: serving,
        pods[1]: {
            "state": "Failed",
            "targetRevision": 1,
            "message": "weights contain NaN",
        },
        "resnet-gone-xyz": serving,  # its pod is gone, the garbage collector not yet done
    }
    for pod, entry in reports.items():
        report(client, namespace, pod, entry)
    syncer = Syncer(kube, CPU, EventRecorder(kube, resources.MANAGER))
    syncer.memory[(namespace, "resnet")] = {}  # seen before: each report is news
    result = sync(kube, namespace, applied=applied, client=client, syncer=syncer)
    assert "pods" not in result.decision.patch
    status = get(client, namespace)["status"]
    assert "pods" not in status
    assert status["phase"] == "Degraded" and status["updated"] == "1/2"
    assert status["failedReplicas"] == 1
    assert status["failures"] == [{"pod": pods[1], "revision": 1, "reason": "weights contain NaN"}]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert pods[1] in degraded["message"] and "weights contain NaN" in degraded["message"]
    again = sync(kube, namespace, applied=applied, client=client, syncer=syncer)
    assert again.decision.patch == {} and again.events == []
    events = client.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    assert any(e["reason"] == "SwapFailed" and pods[1] in e["message"] for e in events)


def test_kubectl_get_prints_the_columns(crd, kube, namespace):
    client = crd.rest()
    create(client, namespace)
    sync(kube, namespace)
    out = crd.kubectl("get", "-n", namespace, "modeldeployments").stdout
    header, row = out.splitlines()
    assert header.split() == ["NAME", "SERVING", "LATEST", "UPDATED", "READY", "PHASE", "AGE"]
    cells = table_cells(header, row)
    assert (cells["NAME"], cells["SERVING"], cells["LATEST"]) == ("resnet", "", "1")  # none ready


def table_cells(header: str, row: str) -> dict[str, str]:
    """`kubectl get` columns by the header's offsets (an empty cell stays empty)."""
    names = header.split()
    starts = [header.index(f"{n} " if i < len(names) - 1 else n) for i, n in enumerate(names)]
    ends = [*starts[1:], None]
    return {n: row[s:e].strip() for n, s, e in zip(names, starts, ends, strict=True)}


def test_schema_refuses_names_that_children_cannot_carry(crd, namespace):
    with pytest.raises(KubectlError) as refused:
        crd.kubectl(
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
            input=yaml.safe_dump(
                {
                    "apiVersion": "hotswap.dev/v1alpha1",
                    "kind": "ModelDeployment",
                    "metadata": {"name": "a" * 51},
                    "spec": SPEC,
                }
            ),
        )
    assert "metadata.name" in refused.value.stderr


def test_a_spec_the_schema_admits_but_cannot_run_is_failed_with_the_reason(crd, kube, namespace):
    client = crd.rest()
    spec = {**SPEC, "runtime": {"env": [{"name": "HOTSWAP_HOST", "value": "0.0.0.0"}]}}
    create(client, namespace, spec)
    with pytest.raises(SpecError, match="HOTSWAP_HOST"):
        sync(kube, namespace)
    status = get(client, namespace)["status"]
    assert status["phase"] == "Failed" and "HOTSWAP_HOST" in status["error"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "InvalidSpec" and "HOTSWAP_HOST" in degraded["message"]
    client.patch(f"{MD.format(ns=namespace)}/resnet", {"spec": {"runtime": None}})
    sync(kube, namespace)
    status = get(client, namespace)["status"]
    assert "error" not in status and status["phase"] == "Pending" and status["revision"] == 1


def test_objects_it_did_not_create_are_never_taken_over(crd, kube, namespace):
    """A ModelDeployment named like an existing Service and Role (a confused deputy):
    refused in status, nothing written, and the foreign objects stay as they were."""
    client = crd.rest()
    service = client.post(
        f"/api/v1/namespaces/{namespace}/services",
        {"metadata": {"name": "resnet"}, "spec": {"ports": [{"port": 80}]}},
    )
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    rules = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
    role = client.post(f"{rbac}/roles", {"metadata": {"name": "resnet-runtime"}, "rules": rules})
    created = create(client, namespace)
    with pytest.raises(ChildConflictError, match="never takes over"):
        sync(kube, namespace)
    status = get(client, namespace)["status"]
    assert status["phase"] == "Failed"
    assert f"Service {namespace}/resnet already exists and is held by no owner" in status["error"]
    for path, before in (
        (f"/api/v1/namespaces/{namespace}/services/resnet", service),
        (f"{rbac}/roles/resnet-runtime", role),
    ):
        now = client.get(path)
        assert now["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
        assert "ownerReferences" not in now["metadata"]
    with pytest.raises(ApiError) as absent:  # all or nothing: not even the ConfigMap
        client.get(f"/api/v1/namespaces/{namespace}/configmaps/resnet-model")
    assert absent.value.status == 404
    client.delete(f"/api/v1/namespaces/{namespace}/services/resnet")
    client.delete(f"{rbac}/roles/resnet-runtime")
    sync(kube, namespace)
    status = get(client, namespace)["status"]
    assert "error" not in status and status["revision"] == 1
    (ref,) = client.get(f"{rbac}/roles/resnet-runtime")["metadata"]["ownerReferences"]
    assert ref["uid"] == created["metadata"]["uid"]


def test_a_file_outside_the_allowed_roots_is_refused_in_status(crd, kube, namespace):
    client = crd.rest()
    spec = {**SPEC, "checkpoint": {"uri": "file:///etc/passwd.pt", "sha256": SHA1}}
    create(client, namespace, spec)
    with pytest.raises(SpecError, match=r"policy\.fileRoots"):
        sync(kube, namespace)
    status = get(client, namespace)["status"]
    assert status["phase"] == "Failed" and "spec.checkpoint.uri" in status["error"]


class RacingKube(Kube):
    """A Kube whose next status write is preceded by `race()`: another writer between
    the sync's read and its write."""

    def __init__(self, api, race):
        super().__init__(api)
        self.race = race
        self.conflicts = 0

    def patch_status(self, namespace, name, status, resource_version=None):
        race, self.race = self.race, None
        if race is not None:
            race()
        try:
            return super().patch_status(namespace, name, status, resource_version)
        except ConflictError:
            self.conflicts += 1
            raise


def test_a_status_write_conflict_syncs_again_and_loses_nothing(crd, kube, namespace):
    """Between the sync's read and its status write, a pod reports and the spec
    changes: the write is refused (409, resourceVersion precondition: the spec change)
    and the sync that follows plans from both."""
    client = crd.rest()
    create(client, namespace)
    applied = sync(kube, namespace).applied
    pods = wait_pods(client, namespace)
    path = f"{MD.format(ns=namespace)}/resnet"
    serving = {"revision": 1, "sha256": SHA1, "state": "Serving", "targetRevision": 1}
    report(client, namespace, pods[0], serving)
    v2 = {"uri": "file:///models/v2.safetensors", "sha256": SHA2}

    def meanwhile():
        report(client, namespace, pods[1], serving)
        client.patch(path, {"spec": {"checkpoint": v2}}, MERGE_PATCH)

    racing = RacingKube(crd.api_client(), meanwhile)
    with pytest.raises(ConflictError):
        sync(racing, namespace, applied=applied, client=client)
    assert racing.conflicts == 1
    untouched = get(client, namespace)["status"]
    assert untouched["revision"] == 1 and "updated" in untouched  # the stale plan: not written
    sync(racing, namespace, applied=applied, client=client)  # the controller's re-sync
    status = get(client, namespace)["status"]
    assert status["revision"] == 2 and status["observedGeneration"] == 2
    assert status["stable"]["sha256"] == SHA2 and status["updated"] == "0/2"
    assert set(replica_reports(client, namespace)) == set(pods)  # both reports kept
    config = json.loads(
        client.get(f"/api/v1/namespaces/{namespace}/configmaps/resnet-model")["data"]["model.json"]
    )
    assert config["stable"]["checkpoint"]["sha256"] == SHA2
    assert racing.conflicts == 1


def test_a_refused_event_never_fails_the_sync(crd, kube, namespace):
    """Every Event is refused (422, an admission policy): the sync still writes the
    children, status and model.json, and a spec change after it converges too."""
    client = crd.rest()
    policy = refuse_events(client, namespace)
    outcomes: list[str] = []
    syncer = Syncer(kube, CPU, EventRecorder(kube, resources.MANAGER, outcomes.append))
    try:
        create(client, namespace)
        first = sync(kube, namespace, syncer=syncer)
        assert reasons(first) == ["RevisionCreated"] and outcomes == ["failed"]
        patch = {"spec": {"checkpoint": {"uri": "file:///models/v2.safetensors", "sha256": SHA2}}}
        client.patch(f"{MD.format(ns=namespace)}/resnet", patch, MERGE_PATCH)
        sync(kube, namespace, applied=first.applied, syncer=syncer)
        status = get(client, namespace)["status"]
        assert status["revision"] == 2 and status["observedGeneration"] == 2
        assert outcomes == ["failed", "failed"]
        events = client.get(f"/api/v1/namespaces/{namespace}/events")["items"]
        assert not [e for e in events if e["involvedObject"].get("name") == "resnet"]
    finally:
        allow_events(client, policy)


def test_a_repeated_event_is_aggregated(crd, kube, namespace):
    """The same Event twice is one object with count 2, not two objects."""
    from hotswap_operator.reasons import Event, EventType, Reason

    client = crd.rest()
    md = create(client, namespace)
    recorder = EventRecorder(kube, resources.MANAGER)
    event = Event(EventType.WARNING, Reason.SWAP_FAILED, "pod p failed revision 2: NaN")
    assert recorder.record(md, event, "2026-01-01T00:00:00Z")
    assert recorder.record(md, event, "2026-01-01T00:00:05Z")
    items = [
        e
        for e in client.get(f"/api/v1/namespaces/{namespace}/events")["items"]
        if e["reason"] == "SwapFailed"
    ]
    assert len(items) == 1 and items[0]["count"] == 2
    assert items[0]["lastTimestamp"] == "2026-01-01T00:00:05Z"
