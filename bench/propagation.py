"""Benchmark: time from a ModelDeployment patch to every pod serving the new revision.

It starts the real control plane and a real node (devcluster/node.py: kubelet,
containerd, runc, kube-proxy) whose kubelet resyncs pods, and so updates their ConfigMap
volumes, every ``--sync-frequency`` (kubelet's default, 1 min, unless told otherwise),
loads the operator image and the e2e runtime image (the runtime image plus the tiny test
model) into containerd, installs the chart with helm (the operator runs as a pod), and
runs two ModelDeployments of ``--pods`` replicas of the tiny model side by side:

* ``fast``: the runtime's API watch of its ConfigMap is on (the default);
* ``mount_only``: ``HOTSWAP_API_WATCH=false``, so pods see a change only when the
  kubelet projects the mounted file.

Each change patches ``spec.checkpoint`` to the next of three checkpoints (a new revision
each time) and clocks, from just before the patch, until every pod answers
``GET /v2/models/<name>`` with the new revision (polled every 20 ms on the pod IPs).
The last line printed is one JSON object with ``fast_p50_s``, ``fast_p95_s``,
``mount_only_p50_s``, ``pods`` and the raw times. Target: ``fast_p95_s`` < 2 s.

    python bench/propagation.py [--changes 10] [--quick] [--mount-changes N] [--pods 4]
                                [--sync-frequency 1m] [--out FILE]

``--quick`` keeps 10 fast changes but measures only 3 mount-only changes (each can take
a minute or more); ``--mount-changes 0`` skips the mount-only ModelDeployment. The JSON
says how many of each ran. Needs root (the real node); one node per machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import REPO, percentile, poll
from devcluster import checkpoints, tiny
from devcluster import node as real
from devcluster.cluster import Cluster, ensure_binary
from devcluster.fleet import RUNTIME_PORT, Fleet, cpu_deployment, helm_install
from examples.checkpoints import pod_uri

POLL_S = 0.02
HELM = REPO / ".cache" / "bin" / "helm"
# The runtime pods run the e2e runtime image: the runtime image plus the tiny model.
RUNTIME_SETS = (
    f"runtime.image.repository={real.TEST_RUNTIME_IMAGE.rsplit(':', 1)[0]}",
    f"runtime.image.tag={real.TEST_RUNTIME_IMAGE.rsplit(':', 1)[1]}",
)


def make_checkpoints(folder: Path) -> list[dict[str, str]]:
    """Three checkpoints under the examples' folder, named as the pods see it (/models)."""
    refs = []
    for seed in (1, 2, 3):
        path = folder / f"v{seed}.safetensors"
        refs.append({"uri": pod_uri(path), "sha256": checkpoints.save(tiny.weights(seed), path)})
    return refs


def manifest(name: str, pods: int, checkpoint: dict[str, str], api_watch: bool) -> dict[str, Any]:
    env = [{"name": "HOTSWAP_TORCH_THREADS", "value": "1"}]
    if not api_watch:
        env.append({"name": "HOTSWAP_API_WATCH", "value": "false"})
    return cpu_deployment(
        name,
        pods,
        tiny.ARCHITECTURE,
        [tiny.FEATURES],
        checkpoint,
        runtime={"env": env},
        rollout={"strategy": "AllAtOnce"},
    )


def serving_everywhere(http: httpx.Client, urls: list[str], revision: int) -> bool:
    want = [str(revision)]
    return all(http.get(url, timeout=2).json().get("versions") == want for url in urls)


def config_names(fleet: Fleet, revision: int) -> bool:
    """The operator has written `revision` into the ConfigMap's model.json."""
    path = f"/api/v1/namespaces/{fleet.namespace}/configmaps/{fleet.name}-model"
    text = (fleet.client.get(path).get("data") or {}).get("model.json") or "{}"
    return bool(json.loads(text).get("stable", {}).get("revision") == revision)


def one_change(
    fleet: Fleet, http: httpx.Client, urls: list[str], ref: dict[str, str], timeout: float
) -> tuple[float, float]:
    """(seconds to the ConfigMap write, seconds to every pod serving) for one patch."""
    revision = int(fleet.status()["revision"]) + 1
    start = time.perf_counter()
    fleet.patch_spec({"checkpoint": ref})
    written = [0.0]

    def done() -> bool:
        if not written[0] and config_names(fleet, revision):
            written[0] = time.perf_counter() - start
        return serving_everywhere(http, urls, revision)

    poll(done, timeout, f"{fleet.name}: every pod on revision {revision}", POLL_S)
    total = time.perf_counter() - start
    fleet.wait_serving(revision, len(urls), timeout=60)  # status settled before the next change
    return round(written[0] or total, 3), round(total, 3)


def measure(
    fleet: Fleet, refs: list[dict[str, str]], changes: int, timeout: float
) -> tuple[list[float], list[float]]:
    """Per change: seconds to the ConfigMap write and to every pod serving the revision."""
    urls = [f"http://{ip}:{RUNTIME_PORT}/v2/models/{fleet.name}" for ip in fleet.pod_ips()]
    written, served = [], []
    with httpx.Client() as http:
        for i in range(changes):
            w, t = one_change(fleet, http, urls, refs[(i + 1) % len(refs)], timeout)
            written.append(w)
            served.append(t)
            print(
                f"{fleet.name} change {i + 1}/{changes}: {t:.3f}s (ConfigMap {w:.3f}s)", flush=True
            )
    return written, served


def deploy(fleet: Fleet, pods: int, ref: dict[str, str], api_watch: bool) -> None:
    fleet.apply(manifest(fleet.name, pods, ref, api_watch))
    fleet.wait_serving(1, pods, timeout=600)


def run(args: argparse.Namespace) -> dict[str, Any]:
    mount_changes = args.mount_changes if args.mount_changes is not None else args.changes
    if args.quick and args.mount_changes is None:
        mount_changes = 3
    real.ensure_binaries()
    real.ensure_images()
    folder = checkpoints.local_folder("bench-propagation")
    try:
        refs = make_checkpoints(folder)
        with (
            Cluster(ensure_binary(), node_ip=real.NODE_IP) as cluster,
            real.RealNode(cluster, sync_frequency=args.sync_frequency) as node,
        ):
            node.load_images([real.OPERATOR_IMAGE, real.TEST_RUNTIME_IMAGE])
            namespace = f"bench-{uuid.uuid4().hex[:6]}"
            helm_install(
                cluster,
                HELM,
                "hotswap",
                namespace,
                f"watchNamespaces={{{namespace}}}",
                *RUNTIME_SETS,
            )
            fast = Fleet(cluster, namespace, "fast")
            mount = Fleet(cluster, namespace, "mount-only")
            deploy(fast, args.pods, refs[0], api_watch=True)
            if mount_changes:
                deploy(mount, args.pods, refs[0], api_watch=False)
            fast_written, fast_times = measure(fast, refs, args.changes, timeout=60)
            mount_written: list[float] = []
            mount_times: list[float] = []
            if mount_changes:
                mount_written, mount_times = measure(mount, refs, mount_changes, timeout=300)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "pods": args.pods,
        "changes_fast": len(fast_times),
        "changes_mount_only": len(mount_times),
        "quick": bool(args.quick),
        "kubelet_sync_frequency": args.sync_frequency,
        "fast_times_s": fast_times,
        "mount_only_times_s": mount_times,
        "operator_write_p50_s": percentile(fast_written + mount_written, 50),
        "fast_p50_s": percentile(fast_times, 50),
        "fast_p95_s": percentile(fast_times, 95),
        "fast_max_s": max(fast_times),
        "mount_only_p50_s": percentile(mount_times, 50) if mount_times else None,
        "mount_only_p95_s": percentile(mount_times, 95) if mount_times else None,
        "target_fast_p95_s": 2.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=10, help="changes per mode (>= 10)")
    parser.add_argument("--quick", action="store_true", help="only 3 mount-only changes")
    parser.add_argument("--mount-changes", type=int, help="mount-only changes (0 skips it)")
    parser.add_argument("--pods", type=int, default=4, help="replicas of each ModelDeployment")
    parser.add_argument(
        "--sync-frequency",
        default="1m",
        help="the kubelet's syncFrequency: when it updates mounted ConfigMaps (default 1m)",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args(argv)
    result = run(args)
    text = json.dumps(result, sort_keys=True)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
