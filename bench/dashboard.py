"""Benchmark: `kubectl hotswap dashboard` at 1000 pods, in headless Chromium.

The real control plane (devcluster/cluster.py); one Canary ModelDeployment of `--pods`
pods whose reports are their ModelReplicas, written the way a runtime pod's Reporter
writes them (merge patch), and whose status the operator's real sync makes. The
plugin serves the page as cluster admin; Debian's Chromium (devcluster/browser.py)
shows it. Figures:

* `load_s`: from opening the URL until the grid shows every pod;
* `swap_to_page_s` (p50/p95/max over `--samples` single-pod swaps, one at a time): from
  the write of a pod's new report (revision N+1, Serving) until the page has drawn that
  pod in its new revision (the page's own clock, `hotswapBoard.shownAt`, against the
  bench's: one machine, one clock);
* `burst_to_page_s`: every pod swaps (one write each, as fast as the bench writes):
  from the last write until the page shows every pod on the new revision;
* `js_heap_mb` (performance.memory, precise), `browser_rss_mb` (chromedriver's
  Chromium and its processes, /proc) after the burst, against `blank_rss_mb` (the same
  Chromium on about:blank, before the page), `plugin_rss_mb` (the dashboard process);
* `renders`: the page's draws during the burst (the server coalesces to 4/s).

With `--hollow` the pods are hollow instead (devcluster/hollow.py through
bench/scale.py's `hollow_cluster`: the real node runs the operator installed by helm,
`--nodes` hollow node processes run the runtime's real control path per pod, which
writes the reports). Then one checkpoint change swaps every pod (AllAtOnce) and the
figures are `hollow_swap`: per pod, seconds from the patch until the bench's own watch
saw the pod's new report (`watch_s`) and until the page drew it (`page_s`), and
`page_behind_watch_s` (page minus watch, p50/p95/max over pods); plus the load and
memory figures above. Needs root and the real node (one per machine: hold
/run/hotswap-e2e-wait.lock).

    PYTHONPATH=contract:operator:runtime:. .venv/bin/python bench/dashboard.py \\
        [--pods 1000] [--samples 20] [--out FILE] [--screenshot FILE]
        [--hollow [--nodes 8] [--load-seconds 1]]

Prints one JSON object (and writes it to --out).
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench._common import percentile, rss_mb
from devcluster import browser
from devcluster.cluster import REPO, Cluster, ensure_binary
from devcluster.rest import MERGE_PATCH, ApiError, KubeClient
from devcluster.waiting import wait_for
from hotswap_operator import resources
from hotswap_operator.config import RuntimeDefaults
from hotswap_operator.context import PodInfo
from hotswap_operator.events import EventRecorder
from hotswap_operator.kube import Kube
from hotswap_operator.sync import Syncer

NAME, NS = "fleet", "bench-dashboard"
API = "/apis/hotswap.dev/v1alpha1/namespaces/" + NS
SHA = [f"{i:x}" * 64 for i in range(1, 10)]
CPU = RuntimeDefaults.model_validate({"gpu": {"enabled": False}})
SWAP = {"fetch": 0.8, "parse": 0.05, "load": 0.4, "validate": 0.12, "activate": 0.002}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--screenshot", type=Path, help="also save the page after the burst")
    parser.add_argument("--hollow", action="store_true", help="hollow pods, the real operator")
    parser.add_argument("--nodes", type=int, default=8, help="hollow node processes")
    parser.add_argument("--load-seconds", type=float, default=1.0)
    parser.add_argument("--setup-timeout", type=float, default=900)
    return parser.parse_args()


def spec(pods: int, revision: int) -> dict[str, Any]:
    return {
        "replicas": pods,
        "model": {"architecture": "torchvision/resnet18", "inputShape": [3, 32, 32]},
        "checkpoint": {"uri": f"https://store.example/m/v{revision}.pt", "sha256": SHA[revision]},
        "runtime": {"device": "cpu"},
        "rollout": {"strategy": "Canary", "steps": ["10%", "100%"]},
    }


def write(client: KubeClient, pod: str, status: dict[str, Any]) -> None:
    """A pod's report, as its Reporter writes it: merge patch, or create on 404."""
    try:
        client.patch(f"{API}/modelreplicas/{pod}", {"status": status}, MERGE_PATCH)
        return
    except ApiError as err:
        if err.status != 404:
            raise
    labels = {"hotswap.dev/model-deployment": NAME}
    body = {"apiVersion": "hotswap.dev/v1alpha1", "kind": "ModelReplica",
            "metadata": {"name": pod, "labels": labels}, "status": status}  # fmt: skip
    client.post(f"{API}/modelreplicas", body)


def serving(revision: int, swap: bool = True) -> dict[str, Any]:
    extra = {"targetRevision": revision, "swapSeconds": SWAP} if swap else {}
    return {"revision": revision, "sha256": SHA[revision], "state": "Serving", **extra}


def everyone(cluster: Cluster, pods: list[PodInfo], status: dict[str, Any]) -> None:
    """Every pod writes `status` (8 writers, a client each)."""
    local = threading.local()

    def one(pod: PodInfo) -> None:
        if not hasattr(local, "client"):
            local.client = cluster.rest()
        write(local.client, pod.name, status)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, pods))


def shown(driver: Any, pod: str, revision: int) -> float | None:
    """When the page drew `pod` on `revision` (epoch seconds), None if not yet."""
    at = driver.execute_script(
        "const c = document.querySelector(`.pod[data-pod='${arguments[0]}']`);"
        "return c && c.dataset.revision === arguments[1] ? hotswapBoard.shownAt[arguments[0]]"
        " : null;",
        pod,
        str(revision),
    )
    return None if at is None else float(at) / 1000


def count(driver: Any, revision: int) -> int:
    return int(
        driver.execute_script(
            "return document.querySelectorAll(`.pod[data-revision='${arguments[0]}']`).length;",
            str(revision),
        )
    )


def run(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    client = cluster.rest()
    cluster.apply_crd(REPO / "crds")
    cluster.kubectl("create", "namespace", NS)
    pods = [PodInfo(f"{NAME}-{i:04d}", True) for i in range(args.pods)]
    kube = Kube(cluster.api_client())
    syncer = Syncer(kube, CPU, EventRecorder(kube, resources.MANAGER))
    body = {"apiVersion": "hotswap.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": NAME}, "spec": spec(args.pods, 1)}  # fmt: skip
    client.post(f"{API}/modeldeployments", body)
    everyone(cluster, pods, serving(1, False))
    reports = {
        i["metadata"]["name"]: i["status"] for i in client.get(f"{API}/modelreplicas")["items"]
    }
    syncer.sync(NS, NAME, pods, None, reports)
    out: dict[str, Any] = {"pods": args.pods}
    with (
        browser.DashboardProcess(cluster.kubeconfig, NS, NAME) as board,
        browser.chromium() as driver,
    ):
        out["blank_rss_mb"] = round(browser.browser_rss_bytes(driver) / 2**20, 1)
        start = time.time()
        driver.get(board.url)
        wait_for(lambda: count(driver, 1) == args.pods, 120, 0.05, what="every pod on the page")
        out["load_s"] = round(time.time() - start, 3)
        latencies = []
        for i in range(args.samples):
            pod = pods[(i * 37) % args.pods].name
            before = time.time()
            write(client, pod, serving(2))
            drawn = functools.partial(shown, driver, pod, 2)
            at = wait_for(drawn, 30, 0.01, what=f"{pod} on the page")
            latencies.append(at - before)
        out["swap_to_page_s"] = _stats(latencies)
        renders = int(driver.execute_script("return hotswapBoard.applied"))
        everyone(cluster, pods, serving(3))
        last = time.time()
        wait_for(lambda: count(driver, 3) == args.pods, 120, 0.05, what="the burst on the page")
        out["burst_to_page_s"] = round(time.time() - last, 3)
        out["renders"] = int(driver.execute_script("return hotswapBoard.applied")) - renders
        _memory(out, driver, board)
        if args.screenshot:
            shutil.copyfile(browser.screenshot(driver, "bench-dashboard"), args.screenshot)
    return out


def hollow(args: argparse.Namespace) -> dict[str, Any]:
    """1000 hollow pods of one AllAtOnce ModelDeployment; one swap of all of them."""
    from bench import scale

    args.set, args.logs = [], REPO / "bench" / "results" / "dashboard-hollow-logs"
    out: dict[str, Any] = {"pods": args.pods, "hollow": True}
    with scale.hollow_cluster(args, out, -(-args.pods // args.nodes)) as bench:
        name = "board"
        body = scale.manifest(name, args.pods, scale.checkpoint(0))
        bench.client.post(f"{scale.MD_API}/namespaces/{bench.namespace}/modeldeployments", body)
        bench.ready(name, args.pods, args.setup_timeout)
        bench.fix_revision(name)
        revision = bench.revisions[name]
        kubeconfig = bench.cluster.kubeconfig
        with (
            browser.DashboardProcess(kubeconfig, bench.namespace, name) as board,
            browser.chromium() as driver,
        ):
            out["blank_rss_mb"] = round(browser.browser_rss_bytes(driver) / 2**20, 1)
            start = time.time()
            driver.get(board.url)
            wait_for(lambda: count(driver, revision) == args.pods, 120, 0.05, what="every pod")
            out["load_s"] = round(time.time() - start, 3)
            before = time.time()
            swap = bench.swap({name: args.pods}, 300)
            wait_for(lambda: count(driver, revision + 1) == args.pods, 120, 0.05, what="swap")
            drawn = driver.execute_script("return hotswapBoard.shownAt")
            page = [float(drawn[p]) / 1000 - before for p in drawn]
            watch = list(swap["pod_s"])
            out["hollow_swap"] = {
                "watch_s": _stats(watch),
                "page_s": _stats(page),
                "page_behind_watch_s": {
                    k: round(_stats(page)[k] - _stats(watch)[k], 3) for k in ("p50", "p95", "max")
                },
            }
            _memory(out, driver, board)
            if args.screenshot:
                shutil.copyfile(browser.screenshot(driver, "bench-dashboard"), args.screenshot)
    return out


def _memory(out: dict[str, Any], driver: Any, board: browser.DashboardProcess) -> None:
    heap = driver.execute_script("return performance.memory.usedJSHeapSize")
    out["js_heap_mb"] = round(heap / 2**20, 1)
    out["browser_rss_mb"] = round(browser.browser_rss_bytes(driver) / 2**20, 1)
    out["plugin_rss_mb"] = round(rss_mb(board.proc.pid), 1)


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50), 3),
        "p95": round(percentile(values, 95), 3),
        "max": round(max(values), 3),
    }


def main() -> None:
    args = parse()
    problem = browser.missing()
    if problem:
        raise SystemExit(problem)
    if args.hollow:
        result = hollow(args)
    else:
        with Cluster(ensure_binary()) as cluster:
            result = run(cluster, args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
