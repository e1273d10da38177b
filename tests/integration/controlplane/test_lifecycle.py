"""Starting and stopping a control plane of its own: nothing is left running."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from devcluster import cluster as cluster_module
from devcluster import procs
from devcluster.cluster import REPO, Cluster, ensure_binary
from devcluster.kubelet import LocalKubelet
from devcluster.waiting import wait_for


def test_stop_leaves_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first port handed out (etcd's) is taken meanwhile: start retries with new ports.
    taken = socket.create_server(("127.0.0.1", 0))
    ports = iter([taken.getsockname()[1]])
    real_free_port = cluster_module.free_port
    monkeypatch.setattr(cluster_module, "free_port", lambda: next(ports, None) or real_free_port())
    with taken:
        cluster = Cluster(ensure_binary()).start()
    root = cluster.root
    assert "address already in use" in (cluster.logs / "etcd.log").read_text()
    kubelet = LocalKubelet(cluster, "lifecycle-node", projection_delay=0.5, stop_grace=3, gpus=2)
    try:
        kubelet.start()
        node = cluster.rest().get("/api/v1/nodes/lifecycle-node")
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
        assert {"cpu", "memory", "pods"} <= set(node["status"]["capacity"])
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


CRASHING_PARENT = """
import json, sys, time
from devcluster.cluster import Cluster
from devcluster.kubelet import LocalKubelet
cluster = Cluster().start()
kubelet = LocalKubelet(cluster, "crash-node", projection_delay=0.5).start()
sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
kubelet.images.register("example.test/sleep", sleep)
pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "orphan"},
       "spec": {"containers": [{"name": "s", "image": "example.test/sleep:1"}]}}
cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
deadline = time.monotonic() + 60
while kubelet.pid("default", "orphan") is None and time.monotonic() < deadline:
    time.sleep(0.1)
groups = [*cluster.pids.values(), kubelet.pid("default", "orphan")]
print(json.dumps({"groups": groups, "roots": [str(cluster.root), str(kubelet.root)]}), flush=True)
time.sleep(600)
"""


def test_a_crashed_parent_leaves_no_process() -> None:
    ensure_binary()
    parent = subprocess.Popen(
        [sys.executable, "-c", CRASHING_PARENT],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        started = json.loads(line)
        groups = started["groups"]
        assert len(groups) == 5 and None not in groups, line
        assert all(procs.group_alive(g) for g in groups)
    finally:
        parent.kill()  # SIGKILL: no atexit, no finally in the parent
        parent.wait()
    try:
        wait_for(
            lambda: not [g for g in groups if procs.group_alive(g)],
            timeout=15,
            what="children of the killed parent to die",
        )
    finally:
        for root in started["roots"]:
            shutil.rmtree(root, ignore_errors=True)
