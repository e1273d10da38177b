"""Hollow runtime pods, for benchmarks (bench/scale.py, bench/dashboard.py --hollow) and
the dashboard's hollow browser test only: many pods per process.

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

With ``--fetch DIR`` (bench/distribution.py) the stand-in really fetches before its
stand-in load: each pod runs the runtime's settings (`load_settings` of the container's
env), `CheckpointStore` (download, sha256, cache) and peer transfer
(`PeerTransfer.of`: the peer-first fetch, the roster read from the `<name>-peers`
ConfigMap through the pod's OWN API client, and the `PeerServer` bound to the pod's IP),
so its ModelReplica reports where its bytes came from. The node does what kubelet
does for the pod's volumes, under ``DIR/<namespace>/<pod>/`` (removed when the pod
goes): an emptyDir is a folder, a Secret volume is written there as files (read with
the NODE's client, as kubelet reads it: the runtime's Role may not read Secrets, and a
hollow pod has no mounts), and env values naming a path under a mount point are pointed
into that folder (the cache, the peer token file). Pods need addresses they can listen
on: ``--pod-network 127.100.0.0/16`` gives them loopback ones (all of 127.0.0.0/8
reaches ``lo`` on Linux); give each node process a network of its own. Under
``--fetch`` the store's manifest parser imports torch (one import per process).

    python -m devcluster.hollow --kubeconfig admin.kubeconfig --node hollow-0
        [--fetch /var/tmp/hotswap-dist --pod-network 127.100.0.0/16]

`spawn_nodes` starts such processes (they never outlive the caller: devcluster/procs.py).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from devcluster import procs
from devcluster.rest import ApiError, KubeClient, q
from hotswap_contract.wire import Fetched, Revision, configmap_name
from hotswap_runtime.control.desired import Failure, Status, SwapRecord
from hotswap_runtime.control.pod import PodControl, PodIdentity
from hotswap_runtime.control.target import PhaseClock, SwapTarget
from hotswap_runtime.errors import Superseded

if TYPE_CHECKING:
    from hotswap_runtime.checkpoint.peers.transfer import PeerTransfer
    from hotswap_runtime.checkpoint.store import CheckpointStore

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
REPO = Path(__file__).resolve().parents[1]
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

    def fetched(self) -> Fetched | None:
        return None


class FetchingTarget(StandInTarget):
    """A stand-in whose swap first fetches the revision's checkpoint with the runtime's
    store (from peers or the store, verified, cached); only the load is a stand-in."""

    def __init__(self, load_seconds: float, store: CheckpointStore) -> None:
        super().__init__(load_seconds)
        self.store = store

    def swap_to(
        self,
        revision: Revision,
        cancelled: Callable[[], bool],
        clock: PhaseClock,
        progress: Callable[[], None],
    ) -> None:
        with clock("fetch"):
            self.store.fetch_checkpoint(revision.checkpoint, cancelled)
        super().swap_to(revision, cancelled, clock, progress)

    def fetched(self) -> Fetched | None:
        return self.store.last_fetched


def container_env(pod: JSON, ip: str) -> dict[str, str]:
    """The runtime container's environment as kubelet sets it: values, and the
    downward API fields the runtime reads."""
    meta = pod["metadata"]
    fields = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "status.podIP": ip,
        "spec.nodeName": pod["spec"].get("nodeName", ""),
    }
    env: dict[str, str] = {}
    for var in pod["spec"]["containers"][0].get("env") or []:
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif (ref := (var.get("valueFrom") or {}).get("fieldRef")) is not None:
            env[var["name"]] = fields.get(ref.get("fieldPath", ""), "")
    return env


class HollowPod:
    """One runtime pod: the runtime's `PodControl` around a stand-in target; it marks
    the Pod ready once the stand-in serves (the readiness probe's part)."""

    def __init__(self, node: HollowNode, pod: JSON, token: str, ip: str) -> None:
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
        self.root: Path | None = None  # under --fetch: the pod's volumes
        self.store: CheckpointStore | None = None
        self.peers: PeerTransfer | None = None
        target: SwapTarget = StandInTarget(node.load_seconds)
        if node.fetch_root is not None:
            target = self._fetching(pod, ip, node.fetch_root)
        identity = PodIdentity(self.name, self.namespace, model, meta["uid"], "hollow", node.env)
        self.control = PodControl(target, identity, [self])
        self.control.connect(self.api, configmap_name(model))
        if self.peers is not None:
            self.peers.source.api = self.api  # the roster is read as the pod

    def _fetching(self, pod: JSON, ip: str, base: Path) -> FetchingTarget:
        from hotswap_runtime.checkpoint.peers.transfer import PeerTransfer
        from hotswap_runtime.checkpoint.store import CheckpointStore
        from hotswap_runtime.settings import load_settings

        self.root = base / self.namespace / self.name
        env = self.node.volumes(pod, self.root, container_env(pod, ip))
        settings = load_settings([], env)
        self.peers = PeerTransfer.of(settings, self.name)
        peering = self.peers.peering if self.peers is not None else None
        self.store = CheckpointStore.from_settings(settings, peering)
        return FetchingTarget(self.node.load_seconds, self.store)

    def start(self) -> None:
        if self.peers is not None:
            self.peers.server.start()
        self.control.start()

    def stop(self) -> None:
        self.control.stop(timeout=2)
        if self.peers is not None:
            self.peers.server.stop()
        if self.store is not None:
            self.store.close()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

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

    def __init__(
        self,
        client: KubeClient,
        name: str,
        load_seconds: float,
        pods: int,
        fetch_root: Path | None = None,
        network: ipaddress.IPv4Network | None = None,
    ) -> None:
        self.client = client
        self.name = name
        self.load_seconds = load_seconds
        self.fetch_root = fetch_root
        self.network = network
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
            ip = self.next_ip()
            hollow = HollowPod(self, pod, token, ip)
            self.mark(meta["namespace"], meta["name"], False, pod, ip)
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

    def next_ip(self) -> str:
        """A new pod address: from ``network`` when given, else 10.200.0.0/13 (never
        listened on)."""
        with self._lock:
            self._ip += 1
            n = self._ip
        if self.network is not None:
            return str(self.network[n])
        return f"10.{200 + n // 65536 % 50}.{n // 256 % 256}.{n % 256}"

    def volumes(self, pod: JSON, root: Path, env: dict[str, str]) -> dict[str, str]:
        """The container's volumes made under ``root`` as kubelet makes them (emptyDir: a
        folder; secret: its keys as files, read with the node's client), and ``env`` with
        each path under a mount point moved there."""
        spec = pod["spec"]
        by_name = {v["name"]: v for v in spec.get("volumes") or []}
        mounts = spec["containers"][0].get("volumeMounts") or []
        for mount in mounts:
            folder = root / mount["mountPath"].lstrip("/")
            folder.mkdir(parents=True, exist_ok=True)
            secret = by_name.get(mount["name"], {}).get("secret")
            if secret is not None:
                self._write_secret(pod["metadata"]["namespace"], secret, folder)
        points = [m["mountPath"].rstrip("/") for m in mounts]
        for var, value in env.items():
            if any(value == p or value.startswith(p + "/") for p in points):
                env[var] = str(root) + value
        return env

    def _write_secret(self, namespace: str, source: JSON, folder: Path) -> None:
        """A Secret volume's keys as files; none for a missing optional Secret."""
        path = f"/api/v1/namespaces/{q(namespace)}/secrets/{q(source['secretName'])}"
        try:
            found = self.client.get(path)
        except ApiError as err:
            if err.status == 404 and source.get("optional"):
                return
            raise
        for key, value in (found.get("data") or {}).items():
            (folder / key).write_bytes(base64.b64decode(value))

    def mark(
        self,
        namespace: str,
        name: str,
        ready: bool,
        pod: JSON | None = None,
        ip: str | None = None,
    ) -> None:
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
            ip = ip or self.next_ip()
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


def spawn_nodes(
    kubeconfig: Path,
    count: int,
    load_seconds: float,
    max_pods: int,
    logs: Path,
    extra: Callable[[int], list[str]] = lambda i: [],
    prefix: str = "hollow",
) -> list[subprocess.Popen[bytes]]:
    """``count`` hollow node processes, Nodes ``<prefix>-<i>`` (``extra(i)``: more flags
    for node i), each logging to ``logs/<prefix>-<i>.log``."""
    path = [str(REPO / d) for d in ("contract", "runtime")] + [str(REPO)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    flags = ["--kubeconfig", str(kubeconfig), "--load-seconds", str(load_seconds)]
    flags += ["--max-pods", str(max_pods)]
    argv = [sys.executable, "-m", "devcluster.hollow", *flags]
    return [
        procs.spawn(
            [*argv, "--node", f"{prefix}-{i}", *extra(i)],
            log=logs / f"{prefix}-{i}.log",
            env=env,
            cwd=REPO,
        )
        for i in range(count)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hollow runtime pods (benchmarks only)")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--load-seconds", type=float, default=1.0)
    parser.add_argument("--max-pods", type=int, default=1100)
    parser.add_argument(
        "--fetch", type=Path, help="pods fetch checkpoints for real; their volumes go here"
    )
    parser.add_argument(
        "--pod-network", type=ipaddress.IPv4Network, help="pod addresses (e.g. 127.100.0.0/16)"
    )
    args = parser.parse_args(argv)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    node = HollowNode(
        KubeClient(args.kubeconfig),
        args.node,
        args.load_seconds,
        args.max_pods,
        args.fetch,
        args.pod_network,
    )

    def terminate(*_: object) -> None:
        node.stop()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    node.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def placeholder_checkpoint(tag: str) -> dict[str, str]:
    """A checkpoint reference hollow pods never read (their stand-in load does not fetch),
    distinct per ``tag``."""
    sha = hashlib.sha256(tag.encode()).hexdigest()
    return {"uri": f"file:///models/{tag}.safetensors", "sha256": sha}


def deployment(name: str, replicas: int, ref: dict[str, str]) -> dict[str, Any]:
    """A ModelDeployment of ``replicas`` pods that only hollow nodes take (their label and
    taint), rolled out AllAtOnce."""
    return {
        "apiVersion": "hotswap.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "model": {"architecture": "python/hotswap_runtime.examples:mlp", "inputShape": [4]},
            "checkpoint": ref,
            "rollout": {"strategy": "AllAtOnce"},
            "runtime": {
                "device": "cpu",
                "nodeSelector": {LABEL: "true"},
                "tolerations": [{"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}],
            },
        },
    }
