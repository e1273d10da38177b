"""Driving a hotswap install the way a user does: helm, kubectl, traffic to a Service.

Shared by the e2e tests, `scripts/demo.py` and the benchmarks. Everything goes through the real API
server, the real helm binary, and real HTTP to the ModelDeployment's Service (its
ClusterIP, routed by kube-proxy on the real node, devcluster/node.py) to pods that
run as containers from the images built from the Dockerfile.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from devcluster.cluster import REPO, Cluster
from devcluster.rest import ApiError, KubeClient
from devcluster.waiting import wait_for

JSON = dict[str, Any]
CHART = REPO / "charts" / "hotswap"
LOCAL_VALUES = REPO / "examples" / "values-local.yaml"
EXAMPLE = REPO / "examples" / "resnet18.yaml"
MD_API = "/apis/hotswap.dev/v1alpha1"
RUNTIME_PORT = 8080
OPERATOR_PODS = {"labelSelector": "app.kubernetes.io/name=hotswap-operator"}


def helm_install(
    cluster: Cluster, helm: Path, release: str, namespace: str, *sets: str, timeout: int = 300
) -> str:
    """`helm upgrade --install` the chart with the local values, waiting for the operator."""
    cmd = [
        str(helm),
        "upgrade",
        "--install",
        release,
        str(CHART),
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--namespace",
        namespace,
        "--create-namespace",
        "-f",
        str(LOCAL_VALUES),
        "--wait",
        "--timeout",
        f"{timeout}s",
    ]
    for item in sets:
        cmd += ["--set", item]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout + 60)
    if done.returncode != 0:
        raise RuntimeError(f"helm install failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def cpu_deployment(
    name: str,
    replicas: int,
    architecture: str,
    input_shape: Sequence[int],
    checkpoint: JSON,
    *,
    runtime: JSON | None = None,
    **spec: Any,
) -> JSON:
    """A ModelDeployment of `replicas` pods on the CPU, one torch thread each; `runtime`
    adds to spec.runtime and `spec` to the rest of spec (rollout, ...). The tiny model
    (devcluster/tiny.py) is in the e2e runtime image (node.TEST_RUNTIME_IMAGE)."""
    return {
        "apiVersion": "hotswap.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "model": {"architecture": architecture, "inputShape": list(input_shape)},
            "checkpoint": dict(checkpoint),
            **spec,
            "runtime": {
                "device": "cpu",
                "env": [{"name": "HOTSWAP_TORCH_THREADS", "value": "1"}],
                **(runtime or {}),
            },
        },
    }


@dataclass
class Fleet:
    """One ModelDeployment in one namespace, seen through the API."""

    cluster: Cluster
    namespace: str
    name: str
    client: KubeClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = self.cluster.rest()

    @property
    def path(self) -> str:
        return f"{MD_API}/namespaces/{self.namespace}/modeldeployments/{self.name}"

    def apply(self, manifest: JSON) -> None:
        self.cluster.kubectl(
            "apply", "-n", self.namespace, "-f", "-", input=yaml.safe_dump(manifest)
        )

    def deploy(self, manifest: JSON, timeout: float = 300) -> Fleet:
        """Apply `manifest` and wait until its first revision serves on every replica."""
        self.apply(manifest)
        self.wait_serving(1, manifest["spec"]["replicas"], timeout=timeout)
        return self

    def get(self) -> JSON:
        return self.client.get(self.path)

    def status(self) -> JSON:
        return dict(self.get().get("status") or {})

    def patch_spec(self, spec: JSON) -> JSON:
        return self.client.patch(self.path, {"spec": spec})

    def service(self) -> str:
        """`<ClusterIP>:<port>` of the ModelDeployment's Service."""
        svc = self.client.get(f"/api/v1/namespaces/{self.namespace}/services/{self.name}")
        return f"{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"

    def pod_ips(self) -> list[str]:
        return [p["status"]["podIP"] for p in self.pods()]

    def load(self, shape: Sequence[int], clients: int = 2, bodies: Sequence[JSON] = ()) -> Load:
        """Clients of the Service, once it routes to every pod (as a user starts traffic
        after the pods are Ready); `all_answer` also asks each pod what it serves.
        `bodies`: the requests to send in turn (default: one of 0.5s)."""
        service = self.wait_routable()
        return Load(self.name, service, shape, clients, pods=self.pod_ips(), bodies=bodies)

    def ready_endpoints(self) -> set[str]:
        """The pod IPs the Service's EndpointSlices list as ready."""
        selector = {"labelSelector": f"kubernetes.io/service-name={self.name}"}
        slices = self.client.get(
            f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices", selector
        )["items"]
        return {
            address
            for item in slices
            for endpoint in item.get("endpoints") or []
            if (endpoint.get("conditions") or {}).get("ready")
            for address in endpoint.get("addresses") or []
        }

    def wait_routable(self, timeout: float = 120) -> str:
        """Wait until the EndpointSlices list every live pod as ready and kube-proxy
        routes the Service (a health check through it answers); returns `host:port`."""
        service = self.service()
        wait_for(
            lambda: set(self.pod_ips()) <= self.ready_endpoints(),
            timeout=timeout,
            what=f"every {self.name} pod a ready endpoint of its Service",
        )

        def answers() -> bool:
            try:
                return httpx.get(f"http://{service}/v2/health/ready", timeout=5).is_success
            except httpx.HTTPError:
                return False

        wait_for(answers, timeout=timeout, what=f"the {self.name} Service answering")
        return service

    def kubectl_get(self) -> str:
        return self.cluster.kubectl("get", "modeldeployments", "-n", self.namespace).stdout

    def kubectl_get_replicas(self) -> str:
        """`kubectl get modelreplicas -l ...`: which pod serves what (each pod's report)."""
        selector = f"hotswap.dev/model-deployment={self.name}"
        return self.cluster.kubectl(
            "get", "modelreplicas", "-n", self.namespace, "-l", selector
        ).stdout

    def pods(self) -> list[JSON]:
        """Running runtime pods of this ModelDeployment, not terminating, by name."""
        selector = (
            f"app.kubernetes.io/name=hotswap-runtime,hotswap.dev/model-deployment={self.name}"
        )
        items = self.client.get(
            f"/api/v1/namespaces/{self.namespace}/pods", {"labelSelector": selector}
        )["items"]
        live = [p for p in items if not p["metadata"].get("deletionTimestamp")]
        return sorted(live, key=lambda p: p["metadata"]["name"])

    def reports(self) -> dict[str, JSON]:
        """Each pod's report: the status of its ModelReplica (named after the pod)."""
        path = f"{MD_API}/namespaces/{self.namespace}/modelreplicas"
        selector = {"labelSelector": f"hotswap.dev/model-deployment={self.name}"}
        items = self.client.get(path, selector)["items"]
        return {i["metadata"]["name"]: dict(i.get("status") or {}) for i in items}

    def operators(self) -> list[JSON]:
        """The operator's pods (not terminating), by name."""
        items = self.client.get(f"/api/v1/namespaces/{self.namespace}/pods", OPERATOR_PODS)
        live = [p for p in items["items"] if not p["metadata"].get("deletionTimestamp")]
        return sorted(live, key=lambda p: p["metadata"]["name"])

    def lease(self, release: str = "hotswap") -> JSON:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"
        return self.client.get(f"{path}/{release}-leader")

    def leader(self) -> str:
        """Name of the operator pod that holds the leader Lease ("" when none does)."""
        holder = self.lease()["spec"].get("holderIdentity") or ""
        return holder.rsplit("_", 1)[0]

    def events(self, reason: str) -> list[JSON]:
        """Events of this ModelDeployment with `reason`."""
        items = self.client.get(f"/api/v1/namespaces/{self.namespace}/events")["items"]
        return [
            e
            for e in items
            if e.get("reason") == reason and e["involvedObject"].get("name") == self.name
        ]

    def view(self) -> JSON:
        """The status and, under "pods", each pod's own report (its ModelReplica): what
        `kubectl get modeldeployment` and `kubectl get modelreplicas -l ...` show."""
        return {**self.status(), "pods": self.reports()}

    def wait(self, check: Callable[[JSON], bool], what: str, timeout: float = 300) -> JSON:
        """Poll `view()` until `check(view)` holds; the timeout error shows the last one."""
        last: list[JSON] = [{}]

        def probe() -> JSON | None:
            last[0] = self.view()
            return last[0] if check(last[0]) else None

        try:
            return wait_for(probe, timeout=timeout, interval=0.5, what=what)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last status: {summary(last[0])}") from exc

    def wait_serving(self, revision: int, replicas: int, timeout: float = 300) -> JSON:
        """Phase Ready with every pod serving `revision` and ready, and the reports
        (ModelReplicas) naming exactly the live pods: a deleted pod drains (keeps serving)
        for a few seconds on a real node, and its report stays until it is gone."""

        def done(st: JSON) -> bool:
            return (
                st.get("phase") == "Ready"
                and st.get("revision") == revision
                and st.get("updated") == f"{replicas}/{replicas}"
                and st.get("ready") == f"{replicas}/{replicas}"
                and set(st["pods"]) == {p["metadata"]["name"] for p in self.pods()}
                and len(st["pods"]) == replicas
            )

        return self.wait(
            done, f"{self.name}: {replicas} pods Ready on revision {revision}", timeout
        )

    def gone(self) -> bool:
        try:
            self.get()
        except ApiError as err:
            return err.status == 404
        return False


def summary(status: JSON) -> JSON:
    """A view (Fleet.view) without the bulky parts, for error messages."""
    pods = {
        name: {k: v for k, v in entry.items() if k in ("revision", "state", "message")}
        for name, entry in (status.get("pods") or {}).items()
    }
    conditions = [
        f"{c['type']}={c['status']} {c.get('reason')}: {c.get('message')}"
        for c in status.get("conditions") or ()
    ]
    keep = ("phase", "revision", "updated", "ready", "error")
    return {**{k: status.get(k) for k in keep}, "pods": pods, "conditions": conditions}


def pod_ids(fleet: Fleet) -> dict[str, tuple[str, str | None, int]]:
    """pod name -> (uid, container ID, restartCount) for the fleet's pods."""
    out = {}
    for pod in fleet.pods():
        name = pod["metadata"]["name"]
        statuses = pod["status"].get("containerStatuses", [])
        restarts = sum(c.get("restartCount", 0) for c in statuses)
        container = statuses[0].get("containerID") if statuses else None
        out[name] = (pod["metadata"]["uid"], container, restarts)
    return out


def infer_body(shape: Sequence[int]) -> JSON:
    count = 1
    for dim in shape:
        count *= dim
    return {
        "inputs": [
            {"name": "input", "shape": [1, *shape], "datatype": "FP32", "data": [0.5] * count}
        ]
    }


class Load:
    """Clients sending infer requests to a Service (`host:port`) until stopped.

    Counts answers by model_version; any non-200 or connection error is a failed
    request, kept with its reason. `pods` (pod IPs) are asked directly, outside the
    load, which revision each serves (`all_answer`).
    """

    def __init__(
        self,
        model: str,
        service: str,
        shape: Sequence[int],
        clients: int = 2,
        pods: Sequence[str] = (),
        bodies: Sequence[JSON] = (),
    ) -> None:
        self.urls = [f"http://{service}/v2/models/{model}/infer"]
        self.pods = [f"http://{ip}:{RUNTIME_PORT}/v2/health/ready" for ip in pods]
        self.bodies = list(bodies) or [infer_body(shape)]
        self.ok = 0
        self.failures: list[str] = []
        self.failed_at: list[float] = []  # seconds since the load began, per failure
        self.versions: Counter[str] = Counter()
        self.last_version: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)
        ]

    def __enter__(self) -> Load:
        self._began = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)

    def _run(self, offset: int) -> None:
        # A new connection per request, as many independent clients would open: kube-proxy
        # picks a pod per connection, so the load spreads over every ready pod.
        no_keepalive = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=30, limits=no_keepalive) as http:
            i = offset
            while not self._stop.is_set():
                url = self.urls[i % len(self.urls)]
                body = self.bodies[i % len(self.bodies)]
                i += 1
                self._one(http, url, body)

    def _one(self, http: httpx.Client, url: str, body: JSON) -> None:
        try:
            response = http.post(url, json=body)
            version = response.json().get("model_version") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError) as exc:
            self._failed(f"{url}: {exc!r}")
            return
        if version is None:
            self._failed(f"{url}: HTTP {response.status_code} {response.text[:200]}")
            return
        with self._lock:
            self.ok += 1
            self.versions[str(version)] += 1
            self.last_version[url] = str(version)

    def _failed(self, reason: str) -> None:
        with self._lock:
            self.failures.append(reason)
            self.failed_at.append(time.monotonic() - self._began)

    def summary(self) -> str:
        """The failures in a line per reason, with when they began and ended."""
        if not self.failures:
            return f"{self.total} requests, 0 failed"
        reasons = Counter(self.failures).most_common(5)
        lines = [
            f"{len(self.failures)} of {self.total} requests failed, "
            f"from {min(self.failed_at):.1f}s to {max(self.failed_at):.1f}s into the load:"
        ]
        lines += [f"  {count} x {reason}" for reason, count in reasons]
        return "\n".join(lines)

    def wait_answers(self, count: int, timeout: float = 60) -> None:
        start = self.total
        wait_for(lambda: self.total >= start + count, timeout=timeout, what=f"{count} answers")

    def all_answer(self, version: str, timeout: float = 60) -> None:
        """Wait until every pod serves `version` and the Service answers with it."""

        def serving(http: httpx.Client, url: str) -> str | None:
            try:
                answer = http.get(url)
                return str(answer.json().get("model_version")) if answer.is_success else None
            except (httpx.HTTPError, ValueError):
                return None

        def check() -> bool:
            with httpx.Client(timeout=5) as http:
                if any(serving(http, url) != version for url in self.pods):
                    return False
            start = self.total
            wait_for(lambda: self.total > start, timeout=30, what="an answer from the Service")
            with self._lock:
                return set(self.last_version.values()) == {version}

        wait_for(check, timeout=timeout, what=f"every pod answering with version {version}")
