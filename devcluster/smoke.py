"""`make cluster-smoke`: start the control plane, check it with kubectl, run one pod to
Ready on the local kubelet, stop everything, and print the server version last."""

from __future__ import annotations

import json
import sys
import time
import urllib.request

from devcluster.cluster import Cluster, ClusterError, ensure_binary
from devcluster.kubelet import LocalKubelet

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "smoke"},
    "spec": {
        "terminationGracePeriodSeconds": 5,
        "containers": [
            {
                "name": "web",
                "image": "smoke.test/http-server:1",
                "args": ["--bind", "$(POD_IP)", "8080"],
                "env": [
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
                ],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
            }
        ],
    },
}


def _step(began: float, what: str) -> None:
    print(f"[{time.monotonic() - began:5.1f}s] {what}", flush=True)


def _check_rbac(cluster: Cluster) -> None:
    cluster.kubectl("create", "serviceaccount", "smoke")
    who = "--as=system:serviceaccount:default:smoke"
    denied = cluster.kubectl("auth", "can-i", "list", "secrets", who, check=False)
    if denied.returncode == 0 or denied.stdout.strip() != "no":
        raise ClusterError(f"RBAC is off: an unbound ServiceAccount may list secrets: {denied}")
    allowed = cluster.kubectl("auth", "can-i", "list", "secrets")
    if allowed.stdout.strip() != "yes":
        raise ClusterError(f"the admin may not list secrets: {allowed}")


def _run_pod(cluster: Cluster) -> str:
    with LocalKubelet(cluster, "smoke-node", projection_delay=0.5, stop_grace=3) as kubelet:
        kubelet.images.register("smoke.test/http-server", [sys.executable, "-m", "http.server"])
        cluster.kubectl("apply", "-f", "-", input=json.dumps(POD))
        cluster.kubectl("wait", "--for=condition=Ready", "pod/smoke", "--timeout=60s")
        ip = kubelet.pod_ip("default", "smoke")
        with urllib.request.urlopen(f"http://{ip}:8080/", timeout=5) as resp:
            if resp.status != 200:
                raise ClusterError(f"pod smoke at {ip}:8080 answered {resp.status}")
        cluster.kubectl("delete", "pod", "smoke", "--timeout=30s")
        return str(ip)


def main() -> int:
    began = time.monotonic()
    binary = ensure_binary()
    _step(began, f"binary {binary} is current")
    with Cluster(binary) as cluster:
        _step(began, f"control plane ready in {cluster.started_in:.1f}s at {cluster.server}")
        version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
        server_version = version["serverVersion"]["gitVersion"]
        _step(began, f"kubectl: server version {server_version}")
        _check_rbac(cluster)
        _step(began, "RBAC on: an unbound ServiceAccount may not list secrets")
        ip = _run_pod(cluster)
        _step(began, f"pod smoke ran to Ready on the local kubelet at {ip}, then was deleted")
    _step(began, "stopped")
    print(server_version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
