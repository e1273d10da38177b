"""End to end, as a user runs it: helm install, kubectl apply examples/, swap under load.

One helm install and one 3-replica ModelDeployment (examples/resnet18.yaml) serve the
whole module; tests run in file order and each starts from whatever revision the last
one left, so `make e2e-smoke` can run test_three_replica_swap alone.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest
import yaml

from devcluster.cluster import KubectlError
from devcluster.fleet import EXAMPLE, Fleet, pod_ids
from devcluster.node import NODE_IP
from devcluster.rest import ApiError
from devcluster.waiting import wait_for
from examples import checkpoints
from tests.fixtures_runtime.http import serve

SHAPE = (3, 32, 32)
MANIFEST = yaml.safe_load(EXAMPLE.read_text())
NAME = MANIFEST["metadata"]["name"]


@pytest.fixture(scope="module")
def made():
    """The example checkpoints v1..v3 on local disk: version -> (URI in a pod, sha256)."""
    made = {v: checkpoints.make(v) for v in (1, 2, 3)}
    return {v: (checkpoints.pod_uri(path), sha) for v, (path, sha) in made.items()}


@pytest.fixture(scope="module")
def fleet(cluster, node, installed, made):
    fleet = Fleet(cluster, installed, NAME)
    assert MANIFEST["spec"]["checkpoint"] == {"uri": made[1][0], "sha256": made[1][1]}
    fleet.apply(MANIFEST)
    fleet.wait_serving(1, 3, timeout=420)
    return fleet


def checkpoint(made, version, sha256=None):
    uri, sha = made[version]
    return {"checkpoint": {"uri": uri, "sha256": sha256 or sha}}


def events(fleet, reason):
    return [e["message"] for e in fleet.events(reason)]


def available(status):
    """Condition Available as (status, lastTransitionTime): unchanged means it never
    flipped between two reads."""
    found = next(c for c in status["conditions"] if c["type"] == "Available")
    return found["status"], found["lastTransitionTime"]


def test_three_replica_swap(fleet, made):
    assert len(fleet.operators()) == 2  # the chart's default: a leader and a standby
    rev = fleet.status()["revision"]
    was_available = available(fleet.status())
    assert was_available[0] == "True"
    before = pod_ids(fleet)
    assert len(before) == 3 and all(restarts == 0 for _, _, restarts in before.values())
    assert all(container for _, container, _ in before.values())
    with fleet.load(SHAPE) as load:
        load.all_answer(str(rev))
        fleet.patch_spec(checkpoint(made, 2))
        status = fleet.wait_serving(rev + 1, 3)
        load.all_answer(str(rev + 1))
        load.wait_answers(30)
    assert not load.failures, load.summary()
    assert load.versions[str(rev)] > 0 and load.versions[str(rev + 1)] > 0
    assert available(status) == was_available  # True all through the rollout
    assert pod_ids(fleet) == before  # same pods, same containers, no restarts
    for pod, report in status["pods"].items():
        assert (report["revision"], report["sha256"], report["state"]) == (
            rev + 1,
            made[2][1],
            "Serving",
        ), pod
    announced_once(fleet, rev + 1, list(before))
    table = fleet.kubectl_get()
    row = table.splitlines()[1].split()  # NAME SERVING LATEST UPDATED READY PHASE AGE
    assert row[:6] == [NAME, str(rev + 1), str(rev + 1), "3/3", "3/3", "Ready"]
    assert status["checkpoint"] == made[2][1][:12]
    print(
        f"\n{load.total} requests, {len(load.failures)} failed; "
        f"answers by revision: {dict(load.versions)}\n"
    )
    print(table)
    if out := os.environ.get("HOTSWAP_E2E_TABLE"):  # `make e2e-smoke` prints it last
        nodes = fleet.cluster.kubectl("get", "nodes", "-o", "wide").stdout
        Path(out).write_text(
            f"$ kubectl get nodes -o wide\n{nodes}\n$ kubectl get modeldeployments\n{table}\n"
        )


def test_one_pod_reads_the_store_the_others_take_the_bytes_from_it(fleet, made):
    """An http:// checkpoint served on the node's address (a store outside the cluster):
    one pod reads it, the two others take it from their peers (their ModelReplicas say
    so), and not a request fails through the Service meanwhile."""
    rev = fleet.status()["revision"]
    version = 3  # in no pod's cache yet: the swap before served v1, then v2
    path = checkpoints.host_path(made[version][0])
    with serve(path.parent, host=NODE_IP) as store, fleet.load(SHAPE) as load:
        spec = {"checkpoint": {"uri": f"{store.url}/{path.name}", "sha256": made[version][1]}}
        fleet.patch_spec(spec)
        fleet.wait_serving(rev + 1, 3)
        load.all_answer(str(rev + 1))
        assert store.gets == {f"/{path.name}": 1}  # the file left the store once
    assert not load.failures, load.summary()
    fetched = {name: report.get("fetched", {}) for name, report in fleet.reports().items()}
    size = path.stat().st_size
    readers = [name for name, f in fetched.items() if f.get("storeBytes") == size]
    assert len(readers) == 1, fetched
    for name, f in fetched.items():
        if name not in readers:
            assert (f.get("storeBytes", 0), f.get("peerBytes")) == (0, size), (name, f)
            assert f.get("peers") == 1 and f.get("peerFailures", 0) == 0, (name, f)


def announced_once(fleet, rev, pods):
    """Each Event of the change to `rev` exists once, with count 1, although two
    operator replicas watch it: RevisionCreated, Swapped per pod, RolloutComplete."""
    expected = {
        ("RevisionCreated", f"revision {rev}: "),
        ("RolloutComplete", f"serve revision {rev} ("),
        *(("Swapped", f"pod {pod} swapped to revision {rev} ") for pod in pods),
    }

    def found():
        hits = {
            (reason, words): [e for e in fleet.events(reason) if words in e["message"]]
            for reason, words in expected
        }
        return hits if all(hits.values()) else None

    hits = wait_for(found, timeout=30, what=f"the Events of revision {rev}")
    counts = {key: [e.get("count", 1) for e in found] for key, found in hits.items()}
    assert all(c == [1] for c in counts.values()), counts
    sources = {e["reportingInstance"] for found in hits.values() for e in found}
    assert len(sources) == 1, sources  # all from the one leader


def test_the_operator_serves_metrics_and_one_replica_leads(fleet):
    leader = fleet.leader()
    readings = {}
    for pod in fleet.operators():
        url = f"http://{pod['status']['podIP']}:8082/metrics"
        readings[pod["metadata"]["name"]] = parse_metrics(httpx.get(url, timeout=10).text)
    assert {name: m["hotswap_operator_leader"] for name, m in readings.items()} == {
        name: 1.0 if name == leader else 0.0 for name in readings
    }
    lead = readings[leader]
    syncs, seconds = (
        lead["hotswap_operator_sync_seconds_count"],
        lead["hotswap_operator_sync_seconds_sum"],
    )
    assert syncs > 0 and lead["hotswap_operator_queue_depth"] >= 0
    assert lead['hotswap_operator_rollouts_total{outcome="Complete"}'] >= 1
    unexpected = 'hotswap_operator_sync_errors_total{reason="Unexpected"}'
    assert lead.get(unexpected, 0) == 0
    for m in readings.values():  # every replica keeps its caches filled by its watches
        for kind in ("modeldeployment", "modelreplica", "pod"):
            assert m.get(f'hotswap_operator_watch_events_total{{kind="{kind}"}}', 0) > 0, kind
    standby = [m for name, m in readings.items() if name != leader]
    assert all(m.get("hotswap_operator_sync_seconds_count", 0) == 0 for m in standby)
    errors = {k: v for k, v in lead.items() if k.startswith("hotswap_operator_sync_errors_total")}
    print(
        f"\nleader {leader}: {syncs:.0f} syncs, mean {1000 * seconds / syncs:.1f} ms; "
        f"errors {errors}; events {[(k, v) for k, v in lead.items() if 'events_total' in k]}"
    )


def parse_metrics(text):
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_wrong_sha256_degrades_then_recovers(fleet, made):
    status = fleet.status()
    rev, serving_sha = status["revision"], status["stable"]["sha256"]
    was_available = available(status)
    fleet.patch_spec(checkpoint(made, 3, sha256="0" * 64))

    def all_failed(st):
        # The pods' reports are read directly; the Degraded condition is the operator's
        # aggregate of them, written up to a report batch later: wait for both.
        reports = st.get("pods") or {}
        degraded = next((c for c in st.get("conditions") or [] if c["type"] == "Degraded"), {})
        return (
            st.get("phase") == "Degraded"
            and len(reports) == 3
            and all(
                r.get("state") == "Failed" and r.get("targetRevision") == rev + 1
                for r in reports.values()
            )
            and all(pod in degraded.get("message", "") for pod in reports)
        )

    status = fleet.wait(all_failed, "every pod refusing the wrong sha256")
    assert status["revision"] == rev + 1 and status["updated"] == "0/3"
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "SwapFailed"
    for pod, report in status["pods"].items():
        assert (report["revision"], report["sha256"]) == (rev, serving_sha), pod
        assert pod in degraded["message"]
    assert f"failed revision {rev + 1}" in degraded["message"]
    assert "sha256" in degraded["message"].lower()
    assert available(status) == was_available == ("True", was_available[1])  # old one serves
    with fleet.load(SHAPE, clients=1) as load:
        load.all_answer(str(rev))
    assert not load.failures, load.summary()
    assert any("sha256" in m.lower() for m in events(fleet, "SwapFailed"))

    fleet.patch_spec(checkpoint(made, 3))
    status = fleet.wait_serving(rev + 2, 3)
    assert {r["sha256"] for r in status["pods"].values()} == {made[3][1]}


# Run inside each container with `kubectl exec` (through the API server and the kubelet).
WHO_AM_I = """
import os
try:
    open("/written-by-a-test", "w")
    root = "writable"
except OSError as exc:
    root = f"read-only ({exc.strerror})"
caps = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
print(os.getuid(), os.getgid(), caps, root, sep="|")
"""


def test_containers_run_as_uid_10001_with_a_read_only_root(fleet, node):
    pods = fleet.client.get(f"/api/v1/namespaces/{fleet.namespace}/pods")["items"]
    assert {p["metadata"]["labels"]["app.kubernetes.io/name"] for p in pods} == {
        "hotswap-operator",
        "hotswap-runtime",
    }
    for pod in pods:
        name = pod["metadata"]["name"]
        assert pod["spec"]["nodeName"] == node.name
        (status,) = pod["status"]["containerStatuses"]
        assert status["containerID"].startswith("containerd://"), name
        out = node.exec(fleet.namespace, name, "python3", "-c", WHO_AM_I).strip()
        uid, gid, caps, root = out.split("|")
        assert (uid, gid) == ("10001", "10001"), name
        assert int(caps, 16) == 0, f"{name}: effective capabilities {caps}"
        assert root == "read-only (Read-only file system)", name


def condition_time(pod, kind):
    stamp = next(c for c in pod["status"]["conditions"] if c["type"] == kind)
    return time.mktime(time.strptime(stamp["lastTransitionTime"], "%Y-%m-%dT%H:%M:%SZ"))


def test_a_pod_deleted_under_load_fails_no_request(fleet, made):
    """The deleted pod turns unready and keeps serving while the Service stops sending it
    traffic (the runtime's drain), then exits; its replacement starts cold. The
    replacement then swaps in place: cold start and swap of one pod, side by side."""
    rev = fleet.status()["revision"]
    before = pod_uids(fleet)
    (victim, *_) = fleet.pods()
    with fleet.load(SHAPE) as load:
        load.wait_answers(20)
        fleet.client.delete(
            f"/api/v1/namespaces/{fleet.namespace}/pods/{victim['metadata']['name']}"
        )
        wait_for(
            lambda: victim["metadata"]["uid"] not in pod_uids(fleet, terminating=True),
            timeout=60,
            what=f"pod {victim['metadata']['name']} gone",
        )
        fleet.wait_serving(rev, 3)
        load.wait_answers(20)
    assert not load.failures, load.summary()
    (fresh,) = [p for p in fleet.pods() if p["metadata"]["uid"] not in before]
    cold = condition_time(fresh, "Ready") - condition_time(fresh, "PodScheduled")

    name = fresh["metadata"]["name"]
    began = time.monotonic()
    # Not v1: test_operator_restart_mid_change_resumes below changes the spec to v1.
    version = 2 if fleet.status()["stable"]["sha256"] != made[2][1] else 3
    fleet.patch_spec(checkpoint(made, version))
    status = fleet.wait_serving(rev + 1, 3)
    swap_wall = time.monotonic() - began
    print(
        f"\n{load.total} requests through the Service while pod {victim['metadata']['name']} "
        f"was deleted: {len(load.failures)} failed\n"
        f"pod {name}: cold start (scheduled -> Ready) {cold:.0f}s; swap on the same pod "
        f"{sum(status['pods'][name]['swapSeconds'].values()):.2f}s "
        f"(phases {status['pods'][name]['swapSeconds']}; patch -> all 3 pods serving: "
        f"{swap_wall:.1f}s)"
    )


def pod_uids(fleet, terminating=False):
    selector = f"hotswap.dev/model-deployment={fleet.name}"
    items = fleet.client.get(
        f"/api/v1/namespaces/{fleet.namespace}/pods", {"labelSelector": selector}
    )["items"]
    return {
        p["metadata"]["uid"]
        for p in items
        if terminating or not p["metadata"].get("deletionTimestamp")
    }


def test_scale_three_to_two_under_load_fails_no_request(fleet, cluster):
    rev = fleet.status()["revision"]
    uids = pod_uids(fleet)
    with fleet.load(SHAPE) as load:
        load.wait_answers(20)
        cluster.kubectl("scale", "-n", fleet.namespace, f"modeldeployment/{NAME}", "--replicas=2")
        fleet.wait_serving(rev, 2)
        wait_for(lambda: len(pod_uids(fleet, terminating=True)) == 2, 60, what="one pod gone")
        load.wait_answers(20)
    assert not load.failures, load.summary()
    assert pod_uids(fleet) < uids
    print(f"\n{load.total} requests through the Service while scaling 3 -> 2: 0 failed")
    cluster.kubectl("scale", "-n", fleet.namespace, f"modeldeployment/{NAME}", "--replicas=3")
    fleet.wait_serving(rev, 3)


def test_scale_three_to_five_to_two(fleet, cluster):
    rev = fleet.status()["revision"]
    for replicas in (5, 2):
        cluster.kubectl(
            "scale", "-n", fleet.namespace, f"modeldeployment/{NAME}", f"--replicas={replicas}"
        )
        status = fleet.wait_serving(rev, replicas)
        assert status["replicas"] == replicas
    names = {p["metadata"]["name"] for p in fleet.pods()}
    # Reports of the three removed pods go with those pods (owner references), not before.
    fleet.wait(lambda st: set(st["pods"]) == names, "reports of 2 pods left", 120)


def test_invalid_spec_is_refused_by_the_schema(fleet, cluster):
    generation = fleet.get()["metadata"]["generation"]
    bad = {
        **MANIFEST,
        "spec": {
            **MANIFEST["spec"],
            "replicas": 2,
            "checkpoint": {"uri": "ftp://x", "sha256": "not-a-sha"},
        },
    }
    with pytest.raises(KubectlError) as refused:
        fleet.apply(bad)
    assert "spec.checkpoint.sha256" in refused.value.stderr
    assert "spec.checkpoint.uri" in refused.value.stderr
    assert fleet.get()["metadata"]["generation"] == generation


def test_operator_least_privilege(fleet, cluster):
    account = f"system:serviceaccount:{fleet.namespace}:hotswap"
    operators = fleet.operators()
    assert [p["spec"]["serviceAccountName"] for p in operators] == ["hotswap", "hotswap"]
    md = fleet.get()
    # kopf only watches: no diff base, no progress annotations, no finalizer
    annotations = md["metadata"].get("annotations") or {}
    assert not [k for k in annotations if "kopf" in k or k.startswith("hotswap.dev/")]
    assert not md["metadata"].get("finalizers")
    assert "kopf" not in md["status"]

    def can(verb, resource, *more):
        done = cluster.kubectl(
            "auth",
            "can-i",
            verb,
            resource,
            *more,
            "-n",
            fleet.namespace,
            "--as",
            account,
            check=False,
        )
        return done.stdout.strip() == "yes"

    assert can("patch", "deployments.apps") and can(
        "patch", "modeldeployments.hotswap.dev", "--subresource=status"
    )
    assert can("create", "deployments.apps")  # server-side apply of a new child
    assert not can("delete", "deployments.apps") and not can("delete", "configmaps")
    assert not can("update", "deployments.apps")
    assert not can("get", "secrets") and not can("patch", "pods")
    assert not can("patch", "modeldeployments.hotswap.dev")  # status only
    assert can("update", "leases.coordination.k8s.io/hotswap-leader")
    assert not can("update", "leases.coordination.k8s.io/another-lease")


def test_operator_restart_mid_change_resumes(fleet, cluster, made):
    status = fleet.status()
    rev, replicas = status["revision"], status["replicas"]
    operator = ("-n", fleet.namespace, "deployment/hotswap")
    cluster.kubectl("scale", *operator, "--replicas=0")
    wait_for(
        lambda: (
            not fleet.client.get(
                f"/api/v1/namespaces/{fleet.namespace}/pods",
                {"labelSelector": "app.kubernetes.io/name=hotswap-operator"},
            )["items"]
        ),
        timeout=60,
        what="operator pod gone",
    )
    config_path = f"/api/v1/namespaces/{fleet.namespace}/configmaps/{NAME}-model"
    config_version = fleet.client.get(config_path)["metadata"]["resourceVersion"]
    changed = fleet.patch_spec(checkpoint(made, 1))
    assert fleet.status()["observedGeneration"] < changed["metadata"]["generation"]
    assert fleet.client.get(config_path)["metadata"]["resourceVersion"] == config_version
    cluster.kubectl("scale", *operator, "--replicas=2")
    status = fleet.wait_serving(rev + 1, replicas)
    assert status["observedGeneration"] == changed["metadata"]["generation"]
    assert {r["sha256"] for r in status["pods"].values()} == {made[1][1]}


def test_operator_killed_during_a_swap_resumes(fleet, made):
    status = fleet.status()
    rev, replicas = status["revision"], status["replicas"]
    version = 2 if status["stable"]["sha256"] == made[1][1] else 1
    ns = fleet.namespace
    old = wait_for(fleet.leader, timeout=30, what="a leader")
    fleet.patch_spec(checkpoint(made, version))
    fleet.client.delete(f"/api/v1/namespaces/{ns}/pods/{old}", {"gracePeriodSeconds": 0})
    status = fleet.wait_serving(rev + 1, replicas)
    assert {r["sha256"] for r in status["pods"].values()} == {made[version][1]}
    new = wait_for(lambda: (name := fleet.leader()) != old and name, timeout=30, what="new leader")
    assert new in {p["metadata"]["name"] for p in fleet.operators()}


def test_a_deleted_config_map_is_put_back(fleet, cluster):
    path = f"/api/v1/namespaces/{fleet.namespace}/configmaps/{NAME}-model"
    before = fleet.client.get(path)
    cluster.kubectl("delete", "-n", fleet.namespace, f"configmap/{NAME}-model")

    def back():
        try:
            found = fleet.client.get(path)
        except ApiError:
            return None
        return found if found["metadata"]["uid"] != before["metadata"]["uid"] else None

    restored = wait_for(back, timeout=60, what=f"ConfigMap {NAME}-model put back")
    old, new = (json.loads(cm["data"]["model.json"]) for cm in (before, restored))
    assert new["stable"] == old["stable"] and new["generation"] > old["generation"]


def test_delete_removes_every_child(fleet, cluster):
    ns = fleet.namespace
    children = [
        f"/api/v1/namespaces/{ns}/configmaps/{NAME}-model",
        f"/api/v1/namespaces/{ns}/services/{NAME}",
        f"/api/v1/namespaces/{ns}/serviceaccounts/{NAME}-runtime",
        f"/apis/apps/v1/namespaces/{ns}/deployments/{NAME}",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/{NAME}-runtime",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings/{NAME}-runtime",
    ]
    for path in children:
        fleet.client.get(path)
    cluster.kubectl("delete", "-n", ns, f"modeldeployment/{NAME}", "--wait=true")

    def missing(path):
        try:
            fleet.client.get(path)
        except ApiError as err:
            return err.status == 404
        return False

    wait_for(
        lambda: all(missing(p) for p in children) and not fleet.pods(),
        timeout=120,
        what=f"children of {NAME} garbage-collected",
    )
    assert fleet.gone()
