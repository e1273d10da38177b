"""The operator as a process against the real API server (no kubelet, no helm).

`python -m hotswap_operator --namespace <ns>` with the cluster admin's kubeconfig, as
the chart would run it minus the pod: for tests of what only the whole operator shows
(watch triggers, retries, lost updates), where calling the sync directly would not, and
for the benchmarks whose runtime pods are hollow (bench/distribution.py), which then
need no real node.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devcluster import helm, procs
from devcluster.cluster import REPO, Cluster, free_port
from devcluster.fleet import LOCAL_VALUES

CPU_DEFAULTS = '{"gpu": {"enabled": false}}'


@dataclass(frozen=True)
class Running:
    """The operator process and its environment (its ports included)."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]


@contextmanager
def operator_process(cluster: Cluster, namespace: str, log: Path, **env: str) -> Iterator[Running]:
    """Run the operator watching `namespace` (``env``: more variables or other values)."""
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(REPO / d) for d in ("runtime", "operator", ".")),
        "KUBECONFIG": str(cluster.kubeconfig),
        "HOTSWAP_RUNTIME_DEFAULTS": CPU_DEFAULTS,
        "HOTSWAP_LIVENESS_ENDPOINT": f"http://127.0.0.1:{free_port()}/healthz",
        "HOTSWAP_METRICS_PORT": str(free_port()),
        "POD_IP": "127.0.0.1",
        "POD_NAMESPACE": namespace,
        **env,
    }
    argv = [sys.executable, "-m", "hotswap_operator", "--namespace", namespace]
    proc = procs.spawn(argv, log=log, env=environ, cwd=REPO)
    try:
        yield Running(proc, environ)
    finally:
        procs.stop_group(proc, grace=10)


def chart_runtime_defaults(helm_bin: Path, *sets: str) -> str:
    """HOTSWAP_RUNTIME_DEFAULTS as the chart renders it with examples/values-local.yaml
    and the values ``sets`` (``key=value``, as for ``helm --set``): what the runtime pods
    of an operator started by `operator_process` get from it."""
    args = [arg for item in sets for arg in ("--set", item)]
    for doc in helm.template(helm_bin, "-f", str(LOCAL_VALUES), *args):
        if doc.get("kind") != "Deployment":
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            for var in container.get("env") or []:
                if var.get("name") == "HOTSWAP_RUNTIME_DEFAULTS":
                    return str(var["value"])
    raise LookupError("the chart renders no HOTSWAP_RUNTIME_DEFAULTS")
