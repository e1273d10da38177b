"""`make demo`: hotswap end to end on this machine, no Docker and no downloads.

Starts the real control plane and the local kubelet (tests/harness), installs the chart
with the real helm, applies examples/resnet18.yaml (3 replicas), sends traffic to every
pod, points the ModelDeployment at checkpoint v2, and prints `kubectl get
modeldeployments` before and after, the pods' restart counts and the failed requests.
Stops everything at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from examples import checkpoints  # noqa: E402
from tests.e2e.fleet import EXAMPLE, Fleet, Load, helm_install, pod_ids  # noqa: E402
from tests.harness.cluster import Cluster, ensure_binary  # noqa: E402
from tests.harness.kubelet import LocalKubelet  # noqa: E402

NAMESPACE = "default"
OPERATOR_NAMESPACE = "hotswap-system"
HELM = REPO / ".cache" / "bin" / "helm"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show(fleet: Fleet) -> None:
    print("$ kubectl get modeldeployments")
    print(fleet.kubectl_get().rstrip(), flush=True)


def swap_under_load(fleet: Fleet, kubelet: LocalKubelet, v2: tuple[Path, str]) -> int:
    """Swap to v2 while clients hit every pod; returns the number of failed requests."""
    before = pod_ids(fleet, lambda pod: kubelet.pid(NAMESPACE, pod))
    ips = [p["status"]["podIP"] for p in fleet.pods()]
    with Load(fleet.name, ips, (3, 32, 32)) as load:
        load.all_answer("1")
        say(f"traffic running ({len(ips)} pods); swapping to {v2[0].name}")
        began = time.monotonic()
        fleet.patch_spec({"checkpoint": {"uri": v2[0].as_uri(), "sha256": v2[1]}})
        fleet.wait_serving(2, len(ips))
        load.all_answer("2")
        took = time.monotonic() - began
        load.wait_answers(20)
    after = pod_ids(fleet, lambda pod: kubelet.pid(NAMESPACE, pod))
    print(f"every pod serves revision 2 {took:.1f}s after the patch")
    print(f"{'POD':<32} {'UID':<38} {'PID':>8} {'RESTARTS':>8}")
    for pod, (uid, pid, restarts) in after.items():
        same = "same pod and process" if before.get(pod) == (uid, pid, restarts) else "CHANGED"
        print(f"{pod:<32} {uid:<38} {pid or '-':>8} {restarts:>8}  {same}")
    print(f"requests: {load.total}, by revision: {dict(load.versions)}")
    print(f"failed requests: {len(load.failures)}")
    for failure in load.failures[:5]:
        print(f"  {failure}")
    return len(load.failures) + sum(before.get(p) != v for p, v in after.items())


def run(keep: bool) -> int:
    say("example checkpoints (seeded resnet18, safetensors)")
    made = {v: checkpoints.make(v) for v in (1, 2)}
    for path, sha in made.values():
        print(f"{path.as_uri()}  sha256 {sha}")
    say("control plane and local kubelet")
    cluster = Cluster(ensure_binary()).start()
    kubelet = LocalKubelet(cluster, projection_delay=1.0, base_env={"OMP_NUM_THREADS": "1"})
    try:
        kubelet.start()
        print(f"API server {cluster.server} ({cluster.version()}); KUBECONFIG={cluster.kubeconfig}")
        say(f"helm install hotswap charts/hotswap -n {OPERATOR_NAMESPACE}")
        print(helm_install(cluster, HELM, "hotswap", OPERATOR_NAMESPACE).strip())
        say("kubectl apply -f examples/resnet18.yaml")
        fleet = Fleet(cluster, NAMESPACE, "resnet18")
        fleet.apply(yaml.safe_load(EXAMPLE.read_text()))
        fleet.wait_serving(1, 3, timeout=600)
        show(fleet)
        failed = swap_under_load(fleet, kubelet, made[2])
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
        kubelet.stop()
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    return run(parser.parse_args(argv).keep)


if __name__ == "__main__":
    sys.exit(main())
