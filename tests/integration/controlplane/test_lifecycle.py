"""Starting and stopping a control plane of its own: nothing is left running."""

from __future__ import annotations

import json
import sys

from tests.harness import procs
from tests.harness.cluster import Cluster, ensure_binary
from tests.harness.kubelet import LocalKubelet
from tests.harness.waiting import wait_for


def test_stop_leaves_no_process() -> None:
    cluster = Cluster(ensure_binary()).start()
    root = cluster.root
    kubelet = LocalKubelet(cluster, "lifecycle-node", projection_delay=0.5, stop_grace=3)
    try:
        kubelet.start()
        kubelet.images.register(
            "example.test/sleep", [sys.executable, "-c", "import time; time.sleep(600)"]
        )
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "sleeper"},
            "spec": {"containers": [{"name": "s", "image": "example.test/sleep:1"}]},
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
        pod_pid = wait_for(lambda: kubelet.pid("default", "sleeper"), timeout=60, what="sleeper")
        groups = [*cluster.pids.values(), pod_pid]
        assert len(groups) == 5 and all(procs.group_alive(g) for g in groups)
    finally:
        kubelet.stop()
        cluster.stop()
    left = [g for g in groups if procs.group_alive(g)]
    assert not left, f"process groups still alive after stop: {left}"
    assert not root.exists()
    assert not cluster.pids
