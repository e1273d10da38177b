"""The real node (devcluster/node.py) leaves nothing behind, even when the process
that started it is killed: its guardian undoes the links, mounts, cgroups, iptables
chains and processes. Needs root and the node's binaries (make node)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from devcluster import node as real
from devcluster.cluster import REPO
from devcluster.waiting import wait_for

# A process that starts a control plane and a node, runs one pod (a container from the
# local pause image), says so, and waits to be killed.
OWNER = """
import sys, time
from devcluster import node as real
from devcluster.cluster import Cluster, ensure_binary
from devcluster.waiting import wait_for
cluster = Cluster(ensure_binary(), node_ip=real.NODE_IP).start()
node = real.RealNode(cluster).start()
cluster.kubectl("run", "sleeper", f"--image={real.PAUSE_IMAGE}", "--image-pull-policy=Never")
pod = lambda: cluster.rest().get("/api/v1/namespaces/default/pods/sleeper")
wait_for(lambda: pod()["status"].get("phase") == "Running", 60, what="pod running")
print("running", pod()["status"]["containerStatuses"][0]["containerID"], flush=True)
time.sleep(600)
"""


def leftovers() -> list[str]:
    """What a node may leave on the machine, if anything is left."""
    found = []
    for link in (real.BRIDGE, real.NODE_LINK):
        if Path(f"/sys/class/net/{link}").exists():
            found.append(f"link {link}")
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {m}" for m in mounts.split() if m.startswith(str(real.STORE))]
    for tool in ("iptables-save", "ip6tables-save"):
        saved = subprocess.run([tool], capture_output=True, text=True, check=False).stdout
        found += [f"{tool}: {line}" for line in saved.splitlines() if line.startswith(":KUBE-")]
    found += [f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob(f"*/{real.CGROUP_ROOT}")]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and str(real.STORE) in real._cmdline(proc.name):
            found.append(f"process {proc.name}: {real._cmdline(proc.name)[:80]}")
    if real.RUN.exists():
        found.append(f"folder {real.RUN}")
    return found


def test_a_killed_owner_leaves_nothing_behind():
    real.ensure_binaries()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines: list[str] = []
        assert owner.stdout is not None
        for line in owner.stdout:
            lines.append(line)
            if line.startswith("running containerd://"):
                break
        else:
            raise AssertionError("the owner never ran its pod:\n" + "".join(lines[-30:]))
        assert leftovers(), "a running node shows nothing: the check itself is broken"
    finally:
        owner.send_signal(signal.SIGKILL)  # no finalizer, no atexit: only the guardian
        owner.wait()
    try:
        wait_for(lambda: not leftovers(), timeout=90, what="the guardian's cleanup")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; left behind: {leftovers()}") from exc
