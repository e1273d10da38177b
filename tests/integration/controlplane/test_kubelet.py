"""The local kubelet against the real control plane: Deployments become running,
Ready pods; ConfigMap updates reach the pod's folder atomically; env, tokens, restarts,
unknown images and deletion behave as on a real node."""

from __future__ import annotations

import json
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devcluster.cluster import Cluster
from devcluster.kubelet import LocalKubelet
from devcluster.projection import DATA
from devcluster.rest import ApiError, KubeClient
from devcluster.waiting import wait_for

HTTP_IMAGE = "example.test/http-server:1"
SHADOW = "/" + Path(sys.executable).parts[1]
POD_IP_ENV = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
# Writes its environment and argv to the file named by its first argument, then waits.
DUMP = (
    "import json, os, sys, time\n"
    "with open(sys.argv[1] + '.tmp', 'w') as f:\n"
    "    json.dump({'env': dict(os.environ), 'argv': sys.argv}, f)\n"
    "os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"
    "time.sleep(600)\n"
)


@pytest.fixture(scope="module")
def images(kubelet: LocalKubelet) -> LocalKubelet:
    kubelet.images.register("example.test/http-server", [sys.executable, "-m", "http.server"])
    kubelet.images.register("example.test/env-dump", [sys.executable, "-c", DUMP])
    kubelet.images.register("example.test/exit", [sys.executable, "-c", "raise SystemExit(3)"])
    return kubelet


def http_container(**extra: Any) -> dict[str, Any]:
    return {
        "name": "web",
        "image": HTTP_IMAGE,
        "args": ["--bind", "$(POD_IP)", "8080"],
        "env": [POD_IP_ENV],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        **extra,
    }


def pod_manifest(name: str, *containers: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": list(containers), "terminationGracePeriodSeconds": 5, **spec},
    }


def pod_condition(client: KubeClient, ns: str, name: str, kind: str = "Ready") -> bool:
    pod = client.get(f"/api/v1/namespaces/{ns}/pods/{name}")
    conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
    return conditions.get(kind) == "True"


def gone(client: KubeClient, path: str) -> bool:
    try:
        client.get(path)
    except ApiError as err:
        return err.status == 404
    return False


def test_deployment_runs_to_ready(cluster: Cluster, images: LocalKubelet, namespace: str) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [http_container()], "terminationGracePeriodSeconds": 5},
            },
        },
    }
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(deployment))
    cluster.kubectl("-n", namespace, "rollout", "status", "deployment/web", "--timeout=60s")
    admin = cluster.rest()
    sets = admin.get(f"/apis/apps/v1/namespaces/{namespace}/replicasets")["items"]
    assert len(sets) == 1 and sets[0]["metadata"]["ownerReferences"][0]["name"] == "web"
    node = admin.get(f"/api/v1/nodes/{images.node_name}")
    assert "nvidia.com/gpu" not in node["status"]["capacity"]  # only when asked for
    pods = admin.get(f"/api/v1/namespaces/{namespace}/pods", {"labelSelector": "app=web"})["items"]
    assert len(pods) == 2
    ips = set()
    for pod in pods:
        name = pod["metadata"]["name"]
        assert pod["spec"]["nodeName"] == images.node_name  # bound by the scheduler
        assert pod["status"]["phase"] == "Running"
        status = pod["status"]["containerStatuses"][0]
        assert status["ready"] and "running" in status["state"]
        assert status["containerID"].startswith("local://")
        assert status["imageID"].startswith("local://sha256:")
        assert pod["status"]["hostIP"] == "127.0.0.1"
        ip = pod["status"]["podIP"]
        assert ip == images.pod_ip(namespace, name) and ip.startswith("127.0.")
        with urllib.request.urlopen(f"http://{ip}:8080/", timeout=5) as resp:
            assert resp.status == 200
        ips.add(ip)
    assert len(ips) == 2

    # Deleting the Deployment collects the ReplicaSet and its Pods; processes stop.
    pids = [images.pid(namespace, p["metadata"]["name"]) for p in pods]
    assert all(pids)
    admin.delete(
        f"/apis/apps/v1/namespaces/{namespace}/deployments/web", {"propagationPolicy": "Background"}
    )
    wait_for(
        lambda: not admin.get(f"/api/v1/namespaces/{namespace}/pods")["items"],
        timeout=40,
        what="pods of the deleted Deployment removed",
    )
    assert not admin.get(f"/apis/apps/v1/namespaces/{namespace}/replicasets")["items"]
    for pid in pids:
        assert pid is not None and not Path(f"/proc/{pid}").exists()


def configmap(name: str, version: int) -> dict[str, Any]:
    value = f"v{version}-" + "x" * (version * 37 % 3000)
    return {"metadata": {"name": name}, "data": {"a": value, "b": value}}


@pytest.fixture
def cm_pod(cluster: Cluster, images: LocalKubelet, namespace: str) -> Iterator[Path]:
    admin = cluster.rest()
    admin.post(f"/api/v1/namespaces/{namespace}/configmaps", configmap("model", 0))
    manifest = pod_manifest(
        "reader",
        http_container(volumeMounts=[{"name": "model", "mountPath": "/etc/model"}]),
        volumes=[{"name": "model", "configMap": {"name": "model"}}],
    )
    admin.post(f"/api/v1/namespaces/{namespace}/pods", manifest)
    wait_for(lambda: pod_condition(admin, namespace, "reader"), timeout=60, what="reader Ready")
    yield images.pod_dir(namespace, "reader") / "volumes" / "model"


def read_pair(volume: Path) -> tuple[str, str]:
    while True:
        version = volume / (volume / DATA).readlink()
        try:
            return (version / "a").read_text(), (version / "b").read_text()
        except FileNotFoundError:
            continue  # the version was replaced between readlink and open: read again


def test_configmap_update_reaches_the_pod_atomically(
    cluster: Cluster, namespace: str, cm_pod: Path
) -> None:
    assert (cm_pod / "a").read_text().startswith("v0-")
    assert (cm_pod / "a").readlink() == Path("..data/a")
    seen: list[tuple[str, str]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(read_pair(cm_pod))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    admin = cluster.rest()
    path = f"/api/v1/namespaces/{namespace}/configmaps/model"
    try:
        for version in range(1, 8):
            admin.patch(path, {"data": configmap("model", version)["data"]})
            expected = configmap("model", version)["data"]["a"]
            wait_for(
                lambda e=expected: read_pair(cm_pod)[0] == e,  # type: ignore[misc]
                timeout=15,
                what=f"version {version} in {cm_pod}",
            )
        wait_for(  # the reader thread, too, has read the last version (a loaded machine)
            lambda: any(a.startswith("v7-") for a, _ in list(seen)),
            timeout=15,
            what="the reader thread seeing version 7",
        )
    finally:
        stop.set()
        thread.join()
    mixed = [(a[:8], b[:8]) for a, b in seen if a != b]
    assert not mixed, f"reader saw a partial update: {mixed[:3]}"
    versions = {a.split("-")[0] for a, _ in seen}
    assert {"v0", "v7"} <= versions and len(versions) >= 4
    stamps = [p.name for p in cm_pod.iterdir() if p.name.startswith("..20")]
    assert len(stamps) == 1  # old versions are cleaned up


def test_env_token_and_path_rewriting(
    cluster: Cluster, images: LocalKubelet, namespace: str
) -> None:
    admin = cluster.rest()
    admin.post(
        f"/api/v1/namespaces/{namespace}/configmaps",
        {"metadata": {"name": "cfg"}, "data": {"k": "cv"}},
    )
    admin.post(
        f"/api/v1/namespaces/{namespace}/secrets",
        {"metadata": {"name": "sec"}, "data": {"k": "c3Y="}},
    )
    env = [
        POD_IP_ENV,
        {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
        {"name": "CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}},
        {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "k"}}},
        {"name": "CACHE", "value": "/var/cache/app/sub"},
    ]
    container = {
        "name": "dump",
        "image": "example.test/env-dump:1",
        "args": ["/var/cache/app/out.json"],
        "env": env,
        "volumeMounts": [
            {"name": "cache", "mountPath": "/var/cache/app"},
            {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
            # A volume over the folder this machine's python lives in (as /tmp is for a
            # checkout under /tmp): the image's entrypoint must not be rewritten into it.
            {"name": "shadow", "mountPath": SHADOW},
        ],
    }
    volumes = [
        {"name": "cache", "emptyDir": {}},
        {"name": "shadow", "emptyDir": {}},
        {"name": "creds", "secret": {"secretName": "sec", "items": [{"key": "k", "path": "key"}]}},
    ]
    manifest = pod_manifest("dump", container, volumes=volumes)
    created = admin.post(f"/api/v1/namespaces/{namespace}/pods", manifest)
    folder = wait_for(
        lambda: images.pod_dir(namespace, "dump"), timeout=30, what="pod folder of dump"
    )
    out = folder / "volumes" / "cache" / "out.json"
    wait_for(out.exists, timeout=30, what=str(out))
    dumped = json.loads(out.read_text())
    got = dumped["env"]
    assert got["POD_IP"] == images.pod_ip(namespace, "dump")
    assert (got["NAME"], got["NS"], got["UID"]) == ("dump", namespace, created["metadata"]["uid"])
    assert (got["NODE"], got["SA"]) == (images.node_name, "default")
    assert (got["CM"], got["SECRET"]) == ("cv", "sv")
    assert got["CACHE"] == str(folder / "volumes" / "cache" / "sub")
    assert dumped["argv"][1] == str(out)

    # The per-pod kubeconfig carries a token bound to this pod's ServiceAccount.
    assert got["KUBECONFIG"] == str(folder / "kubeconfig")
    review = KubeClient(Path(got["KUBECONFIG"])).post(
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    user = review["status"]["userInfo"]
    assert user["username"] == f"system:serviceaccount:{namespace}:default"
    assert user["extra"]["authentication.kubernetes.io/pod-name"] == ["dump"]
    sa = folder / "serviceaccount"
    assert (sa / "namespace").read_text() == namespace
    assert (sa / "ca.crt").read_bytes() == cluster.ca_cert.read_bytes()

    # Secret volume (items) and the kube-api-access projected volume that admission adds.
    assert (folder / "volumes" / "creds" / "key").read_text() == "sv"
    pod = admin.get(f"/api/v1/namespaces/{namespace}/pods/dump")
    access = next(v["name"] for v in pod["spec"]["volumes"] if "projected" in v)
    projected = folder / "volumes" / access
    assert sorted(p.name for p in projected.iterdir() if not p.name.startswith("..")) == [
        "ca.crt",
        "namespace",
        "token",
    ]
    assert (projected / "ca.crt").read_bytes() == cluster.ca_cert.read_bytes()
    assert (projected / "namespace").read_text() == namespace


def test_restarts_and_unknown_images(
    cluster: Cluster, images: LocalKubelet, namespace: str
) -> None:
    admin = cluster.rest()
    pods = f"/api/v1/namespaces/{namespace}/pods"
    admin.post(pods, pod_manifest("crash", {"name": "c", "image": "example.test/exit:1"}))
    admin.post(pods, pod_manifest("nope", {"name": "c", "image": "registry.test/unknown:1"}))

    def restarted() -> dict[str, Any] | None:
        status = admin.get(f"{pods}/crash")["status"].get("containerStatuses", [{}])[0]
        return status if status.get("restartCount", 0) >= 2 else None

    status = wait_for(restarted, timeout=30, what="crash restarted twice")
    assert status["lastState"]["terminated"]["exitCode"] == 3

    def waiting() -> dict[str, Any] | None:
        statuses = admin.get(f"{pods}/nope")["status"].get("containerStatuses", [])
        return statuses[0]["state"].get("waiting") if statuses else None

    reason = wait_for(waiting, timeout=30, what="nope waiting")
    assert reason["reason"] == "ErrImagePull"
    assert "registry.test/unknown:1" in reason["message"]
    assert admin.get(f"{pods}/nope")["status"]["phase"] == "Pending"


def test_pod_deletion_stops_the_process(
    cluster: Cluster, images: LocalKubelet, namespace: str
) -> None:
    admin = cluster.rest()
    pods = f"/api/v1/namespaces/{namespace}/pods"
    admin.post(pods, pod_manifest("web", http_container()))
    wait_for(lambda: pod_condition(admin, namespace, "web"), timeout=60, what="web Ready")
    pid = images.pid(namespace, "web")
    ip = images.pod_ip(namespace, "web")
    assert pid is not None and Path(f"/proc/{pid}").exists()
    admin.delete(f"{pods}/web")
    wait_for(lambda: gone(admin, f"{pods}/web"), timeout=30, what="pod web removed")
    assert not Path(f"/proc/{pid}").exists()
    assert ip not in images.ips.in_use()


def test_failing_liveness_probe_restarts_the_container(
    cluster: Cluster, images: LocalKubelet, namespace: str
) -> None:
    admin = cluster.rest()
    pods = f"/api/v1/namespaces/{namespace}/pods"
    probe = {"httpGet": {"path": "/missing", "port": 8080}, "periodSeconds": 1}
    admin.post(pods, pod_manifest("sick", http_container(livenessProbe=probe)))
    first = wait_for(lambda: images.pid(namespace, "sick"), timeout=30, what="sick running")

    def restarted() -> dict[str, Any] | None:
        status = admin.get(f"{pods}/sick")["status"].get("containerStatuses", [{}])[0]
        return status if status.get("restartCount", 0) >= 1 else None

    status = wait_for(restarted, timeout=30, what="sick restarted by its liveness probe")
    assert "terminated" in status["lastState"]
    assert not Path(f"/proc/{first}").exists()
    assert "liveness probe of web failed" in images.logs(namespace, "sick").read_text()
