"""`make demo`: hotswap end to end on this machine, no Docker engine and no downloads.

Starts the real control plane and a real node (kubelet, containerd, runc, kube-proxy:
devcluster/node.py), loads the operator and runtime images built from the Dockerfile
(`make images`) into containerd, installs the chart with the real helm, applies
examples/resnet18.yaml (3 replicas), sends traffic to its Service, points the
ModelDeployment at checkpoint v2, and prints `kubectl get modeldeployments` and
`kubectl get modelreplicas` (each pod's own report) before and after, the pods'
container IDs and restart counts, and the failed requests. Stops
everything at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from devcluster import node as real  # noqa: E402
from devcluster.cluster import Cluster, ensure_binary  # noqa: E402
from devcluster.fleet import EXAMPLE, Fleet, helm_install, pod_ids  # noqa: E402
from examples import checkpoints  # noqa: E402

NAMESPACE = "default"
OPERATOR_NAMESPACE = "hotswap-system"
HELM = REPO / ".cache" / "bin" / "helm"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show(fleet: Fleet) -> None:
    print("$ kubectl get modeldeployments")
    print(fleet.kubectl_get().rstrip(), flush=True)
    print(f"$ kubectl get modelreplicas -l hotswap.dev/model-deployment={fleet.name}")
    print(fleet.kubectl_get_replicas().rstrip(), flush=True)


def swap_under_load(fleet: Fleet, v2: tuple[Path, str]) -> int:
    """Swap to v2 while clients call the Service; returns the number of failed requests."""
    before = pod_ids(fleet)
    with fleet.load((3, 32, 32)) as load:
        load.all_answer("1")
        say(f"traffic to Service {fleet.service()} ({len(before)} pods); swapping to {v2[0].name}")
        began = time.monotonic()
        fleet.patch_spec({"checkpoint": {"uri": checkpoints.pod_uri(v2[0]), "sha256": v2[1]}})
        fleet.wait_serving(2, len(before))
        load.all_answer("2")
        took = time.monotonic() - began
        load.wait_answers(20)
    after = pod_ids(fleet)
    print(f"every pod serves revision 2 {took:.1f}s after the patch")
    print(f"{'POD':<28} {'UID':<37} {'CONTAINER':<14} {'RESTARTS':>8}")
    for pod, (uid, container, restarts) in after.items():
        same = (
            "same pod and container" if before.get(pod) == (uid, container, restarts) else "CHANGED"
        )
        short = (container or "-").removeprefix("containerd://")[:12]
        print(f"{pod:<28} {uid:<37} {short:<14} {restarts:>8}  {same}")
    print(f"requests: {load.total}, by revision: {dict(load.versions)}")
    print(f"failed requests: {len(load.failures)}")
    for failure in load.failures[:5]:
        print(f"  {failure}")
    return len(load.failures) + sum(before.get(p) != v for p, v in after.items())


def run(keep: bool) -> int:
    say("example checkpoints (seeded resnet18, safetensors)")
    made = {v: checkpoints.make(v) for v in (1, 2)}
    for path, sha in made.values():
        print(f"{checkpoints.pod_uri(path)}  sha256 {sha}  ({path})")
    say("images (make images) and node binaries (make node)")
    real.ensure_binaries()
    real.ensure_images()
    say("control plane and a real node: kubelet, containerd, kube-proxy")
    cluster = Cluster(ensure_binary(), node_ip=real.NODE_IP).start()
    node = real.RealNode(cluster)
    try:
        node.start()
        took = node.load_images([real.OPERATOR_IMAGE, real.RUNTIME_IMAGE])
        print(f"API server {cluster.server} ({cluster.version()}); KUBECONFIG={cluster.kubeconfig}")
        print(f"images in containerd ({took:.0f}s to copy what changed)")
        print("$ kubectl get nodes -o wide")
        print(cluster.kubectl("get", "nodes", "-o", "wide").stdout.rstrip())
        say(f"helm install hotswap charts/hotswap -n {OPERATOR_NAMESPACE}")
        print(helm_install(cluster, HELM, "hotswap", OPERATOR_NAMESPACE).strip())
        say("kubectl apply -f examples/resnet18.yaml")
        fleet = Fleet(cluster, NAMESPACE, "resnet18")
        fleet.apply(yaml.safe_load(EXAMPLE.read_text()))
        fleet.wait_serving(1, 3, timeout=600)
        show(fleet)
        failed = swap_under_load(fleet, made[2])
        say("after the swap")
        show(fleet)
        if keep:
            say(f"kept running: export KUBECONFIG={cluster.kubeconfig}; Ctrl-C stops")
            while True:
                time.sleep(3600)
        return 1 if failed else 0
    except KeyboardInterrupt:
        return 0
    finally:
        node.stop()
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    return run(parser.parse_args(argv).keep)


if __name__ == "__main__":
    sys.exit(main())
