"""Costs of the test control plane, printed as one JSON object (last line):

    .venv/bin/python -m devcluster.measure

start time (and its phases), resident memory of each component when idle and after a
2-replica Deployment ran to Ready on the local kubelet, and stop time.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from devcluster.cluster import Cluster, ensure_binary
from devcluster.kubelet import LocalKubelet

DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "measure"},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "measure"}},
        "template": {
            "metadata": {"labels": {"app": "measure"}},
            "spec": {
                "containers": [
                    {
                        "name": "web",
                        "image": "measure.test/http-server:1",
                        "args": ["--bind", "$(POD_IP)", "8080"],
                        "env": [
                            {
                                "name": "POD_IP",
                                "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                            }
                        ],
                        "readinessProbe": {"httpGet": {"port": 8080}, "periodSeconds": 1},
                    }
                ]
            },
        },
    },
}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def memory(cluster: Cluster) -> dict[str, float]:
    out = {name: rss_mib(pid) for name, pid in cluster.pids.items()}
    out["total"] = round(sum(out.values()), 1)
    return out


def main() -> int:
    binary = ensure_binary()
    cluster = Cluster(binary)
    result: dict[str, object] = {}
    try:
        cluster.start()
        result["start_s"] = round(cluster.started_in or 0, 2)
        result["start_phases_s"] = {k: round(v, 2) for k, v in cluster.timings.items()}
        result["rss_idle_mib"] = memory(cluster)
        with LocalKubelet(cluster, "measure-node", projection_delay=0.5, stop_grace=3) as kubelet:
            kubelet.images.register(
                "measure.test/http-server", [sys.executable, "-m", "http.server"]
            )
            began = time.monotonic()
            cluster.kubectl("apply", "-f", "-", input=json.dumps(DEPLOYMENT))
            cluster.kubectl("rollout", "status", "deployment/measure", "--timeout=60s")
            result["deployment_ready_s"] = round(time.monotonic() - began, 2)
            result["rss_with_pods_mib"] = memory(cluster)
    finally:
        began = time.monotonic()
        cluster.stop()
        result["stop_s"] = round(time.monotonic() - began, 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
