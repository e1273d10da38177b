"""A local kubelet: runs the pods bound to its Node as local processes.

    kubelet = LocalKubelet(cluster, projection_delay=0.5).start()
    kubelet.images.register("example/http", [sys.executable, "-m", "http.server"])
    ... create a Deployment with image example/http:1 ...
    kubelet.pod_ip("ns", "pod"), kubelet.pid("ns", "pod"), kubelet.logs("ns", "pod")

It authenticates as `system:node:<name>` (Node authorizer + NodeRestriction apply, as to
a real kubelet) and does what a kubelet does, locally:

* registers the Node (Ready; capacity cpu/memory/pods, `nvidia.com/gpu` if asked) and
  renews its Lease and Ready heartbeat every 10 s;
* watches pods with `spec.nodeName=<node>` and gives each its own loopback pod IP
  (127.0.0.2, 127.0.0.3, ...; see ipam.py) so the ports in pod specs keep working;
* runs each container as a process: the image table (images.py) maps image
  repositories to commands, container `args` are appended; an unknown image leaves the
  container Waiting with reason ErrImagePull and a message saying how to register it;
* builds the environment from the pod spec (downward API, ConfigMap/Secret refs,
  envFrom, `$(VAR)` expansion) and, since a process cannot see `/etc/...`, rewrites any
  env value or arg that starts with a volumeMount's mountPath to the pod's local folder
  for that volume (podenv.py);
* projects configMap, secret, downwardAPI and projected volumes with kubelet's atomic
  `..data` layout (projection.py) into `<root>/pods/<ns>_<pod>_<uid8>/volumes/<name>`,
  emptyDir as a plain folder. Later changes land on the next resync, `projection_delay`
  seconds later (default: random 0-60 s each time, like kubelet's periodic sync);
* mints the pod's ServiceAccount token with the TokenRequest API (bound to the pod,
  refreshed at 80% of its life) into `<pod dir>/serviceaccount/{token,ca.crt,namespace}`
  (also what `/var/run/secrets/kubernetes.io/serviceaccount` maps to) and writes
  `<pod dir>/kubeconfig` (tokenFile), exported to the process as KUBECONFIG;
* reports phase, podIP, hostIP, conditions, readiness (readiness probe: httpGet,
  tcpSocket or exec, polled; liveness and startup probes too), restartCount and
  containerStatuses; restarts exited containers per restartPolicy with backoff;
* on graceful deletion sends SIGTERM to each container's process group, SIGKILL after
  the grace period, then deletes the pod object with grace 0.

Not done: kube-proxy (talk to pod IPs), `kubectl logs/exec` (read `logs()` instead),
lifecycle hooks, resource limits, image pulls.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import os
import random
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import urllib3

from devcluster import procs
from devcluster.images import ImageCommand, ImageTable
from devcluster.ipam import LoopbackIPs
from devcluster.podworker import HOST_IP, PodWorker
from devcluster.rest import ApiError, KubeClient, q

if TYPE_CHECKING:
    from devcluster.cluster import Cluster

JSON = dict[str, Any]
HEARTBEAT_SECONDS = 10.0
KUBELET_VERSION = "v1.37.2-local"


def _micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LocalKubelet:
    """A kubelet that runs pods as local processes; see the module docstring."""

    def __init__(
        self,
        cluster: Cluster,
        node_name: str = "local-node",
        *,
        images: Mapping[str, ImageCommand | Sequence[str]] | None = None,
        projection_delay: float | None = None,
        gpus: int = 0,
        capacity: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        restart_backoff: float = 10.0,
        max_backoff: float = 300.0,
        stop_grace: float = 10.0,
        token_seconds: int = 3607,
        base_env: Mapping[str, str] | None = None,
        root: Path | None = None,
    ) -> None:
        self.cluster = cluster
        self.node_name = node_name
        self.images = ImageTable(images)
        self._projection_delay = projection_delay
        self.restart_backoff = restart_backoff
        self.max_backoff = max_backoff
        self.stop_grace = stop_grace
        self.token_seconds = token_seconds
        self.base_env = dict(base_env or {})
        self.allocatable = {
            "cpu": "16",
            "memory": "64Gi",
            "pods": "110",
            "ephemeral-storage": "100Gi",
        }
        self.allocatable |= dict(capacity or {})
        if gpus:
            self.allocatable["nvidia.com/gpu"] = str(gpus)
        self.labels = dict(labels or {})
        self._own_root = root is None
        self.root = root or procs.temp_root("hotswap-kubelet-")
        self.ips = LoopbackIPs()
        self.stopping = False
        self._stop_event = threading.Event()
        self._workers: dict[str, PodWorker] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.client: KubeClient
        self.server = ""
        self.ca_pem = b""
        self._ready_since = _now()
        self._watch_response: urllib3.BaseHTTPResponse | None = None

    def projection_delay(self) -> float:
        """Seconds until the next volume resync of a pod."""
        if self._projection_delay is None:
            return random.uniform(0.0, 60.0)
        return self._projection_delay

    # -- lifecycle ------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> LocalKubelet:
        """Register the Node, start watching pods, wait until the Node is schedulable."""
        self.client = KubeClient(self.cluster.node_kubeconfig(self.node_name))
        self.server = self.cluster.server
        self.ca_pem = self.cluster.ca_cert.read_bytes()
        atexit.register(self.stop)
        self._register()
        for target in (self._watch_loop, self._heartbeat_loop):
            thread = threading.Thread(target=target, name=f"kubelet-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._wait_schedulable(time.monotonic() + timeout)
        return self

    def stop(self) -> None:
        """Stop every pod's processes (pod objects stay) and the kubelet's threads."""
        atexit.unregister(self.stop)
        self.stopping = True
        self._stop_event.set()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.shutdown()
        for worker in workers:
            if worker.is_alive():
                worker.join(timeout=self.stop_grace + 15)
        if self._watch_response is not None:  # an open watch would delay apiserver's exit
            with contextlib.suppress(Exception):
                self._watch_response.shutdown()
        if self._own_root and not os.environ.get("HOTSWAP_KEEP"):
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- for tests ------------------------------------------------------------------

    def _worker(self, namespace: str, name: str) -> PodWorker | None:
        with self._lock:
            found = [
                w for w in self._workers.values() if w.namespace == namespace and w.pod_name == name
            ]
        alive = [w for w in found if w.is_alive()]
        return (alive or found)[-1] if found else None

    def pod_ip(self, namespace: str, name: str) -> str | None:
        worker = self._worker(namespace, name)
        return worker.ip if worker else None

    def pid(self, namespace: str, name: str, container: str | None = None) -> int | None:
        """Process id of a running container (the first one unless named)."""
        worker = self._worker(namespace, name)
        return worker.pid(container) if worker else None

    def logs(self, namespace: str, name: str) -> Path:
        """The pod's log file: stdout/stderr of all its containers, and kubelet notes."""
        worker = self._worker(namespace, name)
        if worker is None:
            raise KeyError(f"local kubelet {self.node_name} never ran pod {namespace}/{name}")
        return worker.log_path

    def pod_dir(self, namespace: str, name: str) -> Path:
        """The pod's local folder (volumes/, serviceaccount/, kubeconfig, pod.log)."""
        return self.logs(namespace, name).parent

    def pids(self) -> list[int]:
        """Process ids of all running containers."""
        with self._lock:
            workers = list(self._workers.values())
        return [r.proc.pid for w in workers for r in w.runs if r.proc is not None]

    # -- node ----------------------------------------------------------------------

    def _node_status(self) -> JSON:
        beat = _now()
        conditions = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        return {
            "capacity": self.allocatable,
            "allocatable": self.allocatable,
            "conditions": [
                {
                    "type": kind,
                    "status": status,
                    "reason": reason,
                    "message": "local kubelet",
                    "lastHeartbeatTime": beat,
                    "lastTransitionTime": self._ready_since,
                }
                for kind, status, reason in conditions
            ],
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": "local",
                "systemUUID": "local",
                "bootID": "local",
                "kernelVersion": os.uname().release,
                "osImage": "local processes",
                "containerRuntimeVersion": "local://1",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _register(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        } | self.labels
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": labels},
        }
        try:
            self.client.post("/api/v1/nodes", node)
        except ApiError as err:
            if err.status != 409:
                raise
        self._beat()

    def _beat(self) -> None:
        path = f"/api/v1/nodes/{q(self.node_name)}/status"
        self.client.patch(path, {"status": self._node_status()})
        lease_path = (
            f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{q(self.node_name)}"
        )
        spec = {
            "holderIdentity": self.node_name,
            "leaseDurationSeconds": 40,
            "renewTime": _micro_now(),
        }
        try:
            self.client.patch(lease_path, {"spec": spec})
        except ApiError as err:
            if err.status != 404:
                raise
            lease = {
                "metadata": {"name": self.node_name, "namespace": "kube-node-lease"},
                "spec": spec,
            }
            self.client.post(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", lease
            )

    def _heartbeat_loop(self) -> None:
        while not self._stop_event.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):  # the next beat retries; 40 s of grace
                self._beat()

    def _wait_schedulable(self, deadline: float) -> None:
        path = f"/api/v1/nodes/{q(self.node_name)}"
        while True:
            node = self.client.get(path)
            taints = [t["key"] for t in node.get("spec", {}).get("taints", [])]
            if "node.kubernetes.io/not-ready" not in taints:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {self.node_name} still has taints {taints}")
            time.sleep(0.2)

    # -- pods ----------------------------------------------------------------------

    def _watch_loop(self) -> None:
        selector = {"fieldSelector": f"spec.nodeName={self.node_name}"}
        while not self.stopping:
            try:
                listed = self.client.get("/api/v1/pods", selector)
                self._sync_all(listed["items"])
                self._watch(selector, listed["metadata"]["resourceVersion"])
            except Exception as err:  # any failure: relist after a second
                if not self.stopping:
                    print(f"local kubelet {self.node_name}: pod watch: {err}")
                    self._stop_event.wait(1.0)

    def _watch(self, selector: dict[str, str], rv: str) -> None:
        while not self.stopping:
            params = {**selector, "resourceVersion": rv, "timeoutSeconds": 10}
            params["allowWatchBookmarks"] = "true"
            for event in self.client.watch("/api/v1/pods", params, self._set_watch):
                obj = event["object"]
                if event["type"] == "ERROR":
                    return  # 410 Gone and friends: relist
                rv = obj["metadata"]["resourceVersion"]
                if event["type"] == "DELETED":
                    self._on_gone(obj["metadata"]["uid"])
                elif event["type"] != "BOOKMARK":
                    self._on_pod(obj)
                if self.stopping:
                    return

    def _set_watch(self, response: urllib3.BaseHTTPResponse) -> None:
        self._watch_response = response
        if self.stopping:
            response.shutdown()

    def _sync_all(self, pods: list[JSON]) -> None:
        uids = set()
        for pod in pods:
            uids.add(pod["metadata"]["uid"])
            self._on_pod(pod)
        with self._lock:
            missing = [uid for uid in self._workers if uid not in uids]
        for uid in missing:
            self._on_gone(uid)

    def _on_pod(self, pod: JSON) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            worker = self._workers.get(uid)
            if worker is None:
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    return
                worker = self._workers[uid] = PodWorker(self, pod)
                worker.start()
                return
        worker.update(pod)

    def _on_gone(self, uid: str) -> None:
        with self._lock:
            worker = self._workers.get(uid)
        if worker is not None:
            worker.gone()
