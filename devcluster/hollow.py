"""Hollow runtime pods, FOR BENCHMARKS ONLY (bench/scale.py): many pods per process.

Kubemark's hollow node, for this project: one process is one fake Node. It registers
the Node (tainted `hotswap.dev/hollow`, so only pods that tolerate it land here) and
renews its Lease, watches the pods the scheduler binds to it (real Pod objects, made by
the real Deployment and ReplicaSet controllers), and for each pod:

* mints a ServiceAccount token bound to that pod (TokenRequest with boundObjectRef, as
  kubelet does), so the pod's API calls authenticate as the pod: RBAC and the chart's
  admission policies apply to them exactly as to a real runtime pod;
* runs the runtime's REAL control path (`control.pod.PodControl`, wired as the runtime
  wires it: the reconciler, the API watch of the ConfigMap and the reporter), around a
  stand-in `SwapTarget` whose "load" waits `--load-seconds` (honouring cancellation)
  instead of fetching and loading weights;
* marks the pod Running through `pods/status` (Ready once its stand-in serves), and on
  graceful deletion stops the pod and deletes the object with grace 0, as kubelet does.

What it leaves out: no HTTP server, no file watcher of a mounted model.json (the API
watch is the path that matters at scale), no load journal. The control path imports no
torch; neither does this module.

    python -m devcluster.hollow --kubeconfig admin.kubeconfig --node hollow-0
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from devcluster.rest import ApiError, KubeClient, q
from hotswap_contract.wire import Revision, configmap_name
from hotswap_runtime.control.desired import Failure, Status, SwapRecord
from hotswap_runtime.control.pod import PodControl, PodIdentity
from hotswap_runtime.control.target import PhaseClock
from hotswap_runtime.errors import Superseded

JSON = dict[str, Any]
TAINT = "hotswap.dev/hollow"
LABEL = "hotswap.dev/hollow-node"
HEARTBEAT_SECONDS = 10.0
# A few hundred pods are a thousand threads on one GIL; they mostly wait on sockets and
# conditions, so a long switch interval costs no latency and saves the forced hand-offs
# (at 5 ms, a swap's burst kept the process in futex calls: 100% system CPU).
SWITCH_INTERVAL_SECONDS = 0.05
STAND_IN_POLL_SECONDS = 0.5  # how often the stand-in load looks for a newer revision
MODEL_LABEL = "hotswap.dev/model-deployment"  # resources.LABEL_DEPLOYMENT
log = logging.getLogger("hollow")


def _now(micro: bool = False) -> str:
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ"
    return dt.datetime.now(dt.UTC).strftime(fmt)


@dataclass
class StandInModel:
    """What the control path reads of a loaded model (`control.target.Serving`)."""

    revision: Revision
    loaded_at: str = field(default_factory=_now)

    @property
    def key(self) -> tuple[int, str]:
        return self.revision.key


class StandInTarget:
    """A `control.target.SwapTarget` whose load is a cancellable wait."""

    def __init__(self, load_seconds: float) -> None:
        self.load_seconds = load_seconds
        self.last_kind = "stand-in"
        self._current: StandInModel | None = None

    def current(self) -> StandInModel | None:
        return self._current

    def swap_to(
        self,
        revision: Revision,
        cancelled: Callable[[], bool],
        clock: PhaseClock,
        progress: Callable[[], None],
    ) -> None:
        with clock("load"):
            deadline = time.monotonic() + self.load_seconds
            while (left := deadline - time.monotonic()) > 0:
                if cancelled():
                    raise Superseded(f"revision {revision.revision} superseded")
                time.sleep(min(left, STAND_IN_POLL_SECONDS))
        self._current = StandInModel(revision)

    def release_memory(self) -> None:
        return None

    def analysis(self) -> None:
        return None

    def fetched(self) -> None:
        return None


class HollowPod:
    """One runtime pod: the runtime's `PodControl` around a stand-in target; it marks
    the Pod ready once the stand-in serves (the readiness probe's part)."""

    def __init__(self, node: HollowNode, pod: JSON, token: str) -> None:
        from kubernetes import client

        meta = pod["metadata"]
        self.node = node
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        model = meta["labels"][MODEL_LABEL]
        cfg = client.Configuration()
        cfg.host = node.client.server
        cfg.ssl_ca_cert = str(node.client.ca_path)
        cfg.api_key = {"authorization": f"Bearer {token}"}
        self.api = client.ApiClient(cfg)
        self.ready = False
        identity = PodIdentity(self.name, self.namespace, model, meta["uid"], "hollow", node.env)
        self.control = PodControl(StandInTarget(node.load_seconds), identity, [self])
        self.control.connect(self.api, configmap_name(model))

    def start(self) -> None:
        self.control.start()

    def stop(self) -> None:
        self.control.stop(timeout=2)

    # -- desired.Observer ----------------------------------------------------------------

    def swap_finished(self, record: SwapRecord) -> None:
        return None

    def config_rejected(self, failure: Failure) -> None:
        return None

    def status_changed(self, status: Status) -> None:
        if status.serving is not None and not self.ready:
            self.ready = True  # the readiness probe would pass from now on
            self.node.pool.submit(self.node.mark, self.namespace, self.name, True)


class HollowNode:
    """One fake Node and the hollow pods bound to it."""

    def __init__(self, client: KubeClient, name: str, load_seconds: float, pods: int) -> None:
        self.client = client
        self.name = name
        self.load_seconds = load_seconds
        self.capacity = {"cpu": "4000", "memory": "16Ti", "pods": str(pods)}
        self.env = {"python": "hollow", "torch": "none"}
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="hollow-node")
        self.pods: dict[str, HollowPod] = {}  # by uid
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ip = 0

    # -- the Node ------------------------------------------------------------------------

    def register(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {"kubernetes.io/hostname": self.name, LABEL: "true"},
            },
            "spec": {"taints": [{"key": TAINT, "value": "true", "effect": "NoSchedule"}]},
        }
        with contextlib.suppress(ApiError):
            self.client.post("/api/v1/nodes", node)
        self.beat()

    def beat(self) -> None:
        now = _now()
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "hollow node",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        status = {"capacity": self.capacity, "allocatable": self.capacity, "conditions": [ready]}
        self.client.patch(f"/api/v1/nodes/{q(self.name)}/status", {"status": status})
        leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": 40, "renewTime": _now(True)}
        try:
            self.client.patch(f"{leases}/{q(self.name)}", {"spec": spec})
        except ApiError as err:
            if err.status != 404:
                raise
            meta = {"name": self.name, "namespace": "kube-node-lease"}
            self.client.post(leases, {"metadata": meta, "spec": spec})

    def heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):
                self.beat()

    # -- pods ----------------------------------------------------------------------------

    def run(self) -> None:
        self.register()
        threading.Thread(target=self.heartbeat, daemon=True).start()
        selector = {"fieldSelector": f"spec.nodeName={self.name}"}
        while not self._stop.is_set():
            try:
                listed = self.client.get("/api/v1/pods", selector)
                for pod in listed["items"]:
                    self.on_pod("ADDED", pod)
                rv = listed["metadata"]["resourceVersion"]
                params = {**selector, "resourceVersion": rv, "timeoutSeconds": 60}
                for event in self.client.watch("/api/v1/pods", params):
                    if event["type"] == "ERROR":
                        break
                    self.on_pod(event["type"], event["object"])
            except Exception as exc:
                log.warning("%s: pod watch: %s", self.name, exc)
                self._stop.wait(1.0)

    def on_pod(self, kind: str, pod: JSON) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            known = uid in self.pods
        if kind == "DELETED":
            self._forget(uid)
        elif pod["metadata"].get("deletionTimestamp"):
            if known or pod.get("status", {}).get("phase") != "Pending":
                self.pool.submit(self._delete, pod)
        elif not known:
            with self._lock:
                self.pods[uid] = cast(HollowPod, None)  # claimed; started on the pool
            self.pool.submit(self._start, pod)

    def _start(self, pod: JSON) -> None:
        meta = pod["metadata"]
        try:
            token = self.token(pod)
            hollow = HollowPod(self, pod, token)
            self.mark(meta["namespace"], meta["name"], False, pod)
            hollow.start()
            with self._lock:
                self.pods[meta["uid"]] = hollow
        except Exception as exc:
            log.warning("%s: pod %s did not start: %s", self.name, meta["name"], exc)
            with self._lock:
                self.pods.pop(meta["uid"], None)

    def token(self, pod: JSON) -> str:
        """A token for the pod's ServiceAccount, bound to the pod (kubelet's TokenRequest)."""
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        spec = {
            "expirationSeconds": 3600,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "uid": meta["uid"],
            },
        }
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        path = f"/api/v1/namespaces/{q(meta['namespace'])}/serviceaccounts/{q(account)}/token"
        return str(self.client.post(path, body)["status"]["token"])

    def mark(self, namespace: str, name: str, ready: bool, pod: JSON | None = None) -> None:
        """Pod status as kubelet reports it: Running, Ready once the model serves."""
        flag = "True" if ready else "False"
        now = _now()
        status: JSON = {
            "conditions": [
                {"type": t, "status": s, "lastTransitionTime": now}
                for t, s in (
                    ("PodScheduled", "True"),
                    ("Initialized", "True"),
                    ("ContainersReady", flag),
                    ("Ready", flag),
                )
            ],
        }
        if pod is not None:
            container = pod["spec"]["containers"][0]
            with self._lock:
                self._ip += 1
                ip = f"10.{200 + self._ip // 65536 % 50}.{self._ip // 256 % 256}.{self._ip % 256}"
            status |= {
                "phase": "Running",
                "hostIP": "10.199.0.1",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "startTime": now,
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": "",
                        "ready": ready,
                        "started": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now}},
                    }
                ],
            }
        path = f"/api/v1/namespaces/{q(namespace)}/pods/{q(name)}/status"
        with contextlib.suppress(ApiError):
            self.client.patch(path, {"status": status}, "application/strategic-merge-patch+json")

    def _delete(self, pod: JSON) -> None:
        meta = pod["metadata"]
        self._forget(meta["uid"])
        path = f"/api/v1/namespaces/{q(meta['namespace'])}/pods/{q(meta['name'])}"
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
        with contextlib.suppress(ApiError):
            self.client.delete(path, body)

    def _forget(self, uid: str) -> None:
        with self._lock:
            hollow = self.pods.pop(uid, None)
        if hollow is not None:
            hollow.stop()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            pods = [p for p in self.pods.values() if p is not None]
        for pod in pods:
            pod.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hollow runtime pods (benchmarks only)")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--load-seconds", type=float, default=1.0)
    parser.add_argument("--max-pods", type=int, default=1100)
    args = parser.parse_args(argv)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    node = HollowNode(KubeClient(args.kubeconfig), args.node, args.load_seconds, args.max_pods)

    def terminate(*_: object) -> None:
        node.stop()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    node.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
