"""Benchmark: one swap at N = 10, 100, 300, 1000 replicas, and 100 ModelDeployments at once.

The real control plane (devcluster/cluster.py) and the chart installed with helm: the
operator runs as two pods (the chart's default) in containers on a real node
(devcluster/node.py: kubelet, containerd, runc; the operator image from the Dockerfile),
under its own RBAC, with the chart's admission policies. Runtime pods are HOLLOW
(devcluster/hollow.py): real Pod objects made by the Deployment and ReplicaSet
controllers, bound by the scheduler to fake Nodes, each running the runtime's real API
watch, desired-state path and reporter with a stand-in model whose load takes
`--load-seconds`, authenticated with a token bound to its own pod. With the real node,
the endpoint controllers, kube-proxy and the node's cluster DNS run too, and follow the
runtime Service's (hollow) endpoints.

One ModelDeployment is scaled 10 -> 100 -> 300 -> 1000; at each size `--swaps` checkpoint
changes are timed. Then 100 ModelDeployments of 5 replicas change at once. Per swap:

* `pod_s`: seconds from the patch until each pod reports the new revision Serving (as
  the bench's watch of the reports sees it), p50/p95 over pods and swaps;
* `status_s`: seconds until the ModelDeployment's status says so (revision, UPDATED N/N,
  phase Ready);
* `status_bytes`: the ModelDeployment object as JSON, after the swap;
* from the API server's /metrics, deltas over the swap: `api_writes` (requests with a
  mutating verb, `apiserver_request_total`), `api_write_bytes` (their bodies,
  `apiserver_request_body_size_bytes_sum`), `api_watch_bytes` (bytes of watch events sent
  to every watcher, `apiserver_watch_events_sizes_sum`: the fan-out, where a big object
  written often costs most); `api_bytes` is write plus watch bytes. Node heartbeats and
  Leases (the operator's leader election, node leases) are left out; `rejected[<priority
  level> <reason>]`: requests Priority and Fairness refused with a 429;
* `operator_cpu_s`: user+system CPU of both operator pods' processes (found through each
  pod's cgroup on the real node, read in /proc), over the swap
  (until every pod converged, plus 2 s); `apiserver_cpu_s`, `etcd_cpu_s` and
  `hollow_cpu_s` (the hollow nodes' processes: on a real cluster, the pods' own nodes)
  likewise, to show what shares this machine's cores;
* `apiserver_rss_mb`, `etcd_rss_mb` after each size.

    python bench/scale.py [--sizes 10,100,300,1000] [--swaps 3] [--fleet 100] [--out FILE]
                          [--logs DIR]  (the hollow nodes' and operators' logs are kept there)

Needs root (the real node); one node per machine.

The last line printed is a JSON summary: `pods` (the largest N measured),
`converge_p95_s`, `status_bytes`, `api_writes_per_swap`, `api_bytes_per_swap` (at that N),
`fleet_converge_p95_s`, and `per_size` with every figure; `--out` also writes the whole
result. A size that does not converge within `--timeout` is recorded with where it stopped
and the bench goes on to the fleet.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import REPO, percentile, rss_mb
from devcluster import node as real
from devcluster.cluster import Cluster, ensure_binary
from devcluster.fleet import OPERATOR_PODS, helm_install
from devcluster.hollow import deployment, placeholder_checkpoint, spawn_nodes
from devcluster.operator_process import chart_runtime_defaults, operator_process
from devcluster.rest import ApiError, KubeClient
from devcluster.waiting import wait_for

JSON = dict[str, Any]
HELM = REPO / ".cache" / "bin" / "helm"
MD_API = "/apis/hotswap.dev/v1alpha1"
REPORT_API = "/apis/hotswap.dev/v1alpha1"
REPORT_PLURAL = "modelreplicas"  # the per-pod report objects, where the CRD has them
MUTATING = ("POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE")
NOISE = ("leases", "nodes")  # heartbeats and leader election: not the swap's cost
TICKS = os.sysconf("SC_CLK_TCK")


def checkpoint(i: int) -> JSON:
    return placeholder_checkpoint(f"scale-{i}")


def manifest(name: str, replicas: int, ref: JSON) -> JSON:
    return deployment(name, replicas, ref)


# -- what the API server and the operator spent ------------------------------------------


def scrape(client: KubeClient) -> dict[str, float]:
    """Write requests, write bytes and watch bytes, summed over resources (noise left out)."""
    resp = client._pool.request(  # the metrics endpoint is text, not JSON
        "GET", client.server + "/metrics", headers=client._headers
    )
    text = resp.data.decode()
    out = {"api_writes": 0.0, "api_write_bytes": 0.0, "api_watch_bytes": 0.0}
    by_resource: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, rest = line.partition("{")
        labels: dict[str, str] = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        value = float(line.rsplit(" ", 1)[1])
        resource = labels.get("resource", labels.get("kind", "")).lower()
        if any(resource.startswith(n) for n in NOISE):
            continue
        if name == "apiserver_request_total" and labels.get("verb") in MUTATING:
            out["api_writes"] += value
            key = f"{labels['verb']} {resource}/{labels.get('subresource', '')}".rstrip("/")
            by_resource[key] = by_resource.get(key, 0.0) + value
        elif name == "apiserver_request_body_size_bytes_sum" and labels.get("verb", "").upper() in (
            "PATCH",
            "UPDATE",
            "CREATE",
            "POST",
            "PUT",
            "APPLY",
        ):
            out["api_write_bytes"] += value
        elif name == "apiserver_watch_events_sizes_sum":
            out["api_watch_bytes"] += value
        elif name == "apiserver_flowcontrol_rejected_requests_total":  # 429s, and why
            key = f"rejected[{labels.get('priority_level')} {labels.get('reason')}]"
            out[key] = out.get(key, 0.0) + value
    out.update({f"writes[{k}]": v for k, v in by_resource.items()})
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 1) for k, v in after.items() if v != before.get(k)}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of `pids`; NaN when one has gone (a restarted operator)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


# -- watching reports and status ---------------------------------------------------------


@dataclass
class Watcher:
    """Watches ModelDeployments (and the per-pod report objects, where they exist) in one
    namespace, and calls `seen(kind, object)` for each event, with the time it arrived."""

    client: KubeClient
    namespace: str
    seen: Callable[[str, JSON, float], None]
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self, reports: bool) -> None:
        paths = [("md", f"{MD_API}/namespaces/{self.namespace}/modeldeployments")]
        if reports:
            paths.append(("report", f"{REPORT_API}/namespaces/{self.namespace}/{REPORT_PLURAL}"))
        for kind, path in paths:
            threading.Thread(target=self._run, args=(kind, path), daemon=True).start()

    def _run(self, kind: str, path: str) -> None:
        while not self.stop.is_set():
            try:
                listed = self.client.get(path)
                for item in listed["items"]:
                    self.seen(kind, item, time.monotonic())
                params = {"resourceVersion": listed["metadata"]["resourceVersion"]}
                for event in self.client.watch(path, {**params, "timeoutSeconds": 120}):
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.seen(kind, event["object"], time.monotonic())
                    if self.stop.is_set():
                        return
            except Exception as exc:
                print(f"bench watch {path}: {exc}", flush=True)
                time.sleep(0.5)


class Progress:
    """For one swap of some ModelDeployments: when each pod first reported the new
    revision Serving, and when each ModelDeployment's status first said all pods do."""

    def __init__(self, targets: dict[str, tuple[int, str, int]], started: float) -> None:
        self.targets = targets  # md -> (revision, sha256, replicas)
        self.started = started
        self.pods: dict[str, float] = {}
        self.status: dict[str, float] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()

    def report(self, md: str, pod: str, report: JSON, at: float) -> None:
        target = self.targets.get(md)
        if target is None or report.get("state") != "Serving":
            return
        if (report.get("revision"), report.get("sha256")) != target[:2]:
            return
        with self.lock:
            self.pods.setdefault(pod, at - self.started)

    def md(self, body: JSON, at: float) -> None:
        name = body["metadata"]["name"]
        target = self.targets.get(name)
        if target is None:
            return
        for pod, entry in ((body.get("status") or {}).get("pods") or {}).items():
            self.report(name, pod, entry, at)  # the per-pod entries of the current design
        st = body.get("status") or {}
        n = target[2]
        if (
            st.get("revision") == target[0]
            and st.get("updated") == f"{n}/{n}"
            and st.get("phase") == "Ready"
        ):
            with self.lock:
                self.status.setdefault(name, at - self.started)
                if len(self.status) == len(self.targets):
                    self.done.set()


class Bench:
    def __init__(self, cluster: Cluster, node: real.RealNode | None, namespace: str) -> None:
        """``node``: the real node running the operator pods; None when the operator runs
        as a process (its pid in ``processes["operator"]``)."""
        self.cluster = cluster
        self.node = node
        self.namespace = namespace
        self.client = cluster.rest()
        self.progress: Progress | None = None
        self.revisions: dict[str, int] = {}
        self.next_ref = 1
        self.has_reports = self._has_report_crd()
        self.processes: dict[str, list[int]] = {}  # apiserver, etcd, hollow: their pids
        self.watcher = Watcher(self.client, namespace, self._seen)
        self.watcher.start(self.has_reports)

    def _has_report_crd(self) -> bool:
        try:
            self.client.get(
                f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                f"{REPORT_PLURAL}.hotswap.dev"
            )
        except ApiError:
            return False
        return True

    def _seen(self, kind: str, obj: JSON, at: float) -> None:
        progress = self.progress
        if progress is None:
            return
        if kind == "md":
            progress.md(obj, at)
            return
        labels = obj["metadata"].get("labels") or {}
        md = labels.get("hotswap.dev/model-deployment", "")
        progress.report(md, obj["metadata"]["name"], obj.get("status") or {}, at)

    def md_path(self, name: str) -> str:
        return f"{MD_API}/namespaces/{self.namespace}/modeldeployments/{name}"

    def operator_pids(self) -> list[int]:
        """Host PIDs of the operator pods' processes (containers on the real node)."""
        if self.node is None:
            return self.processes.get("operator", [])
        node = self.node
        items = self.client.get(f"/api/v1/namespaces/{self.namespace}/pods", OPERATOR_PODS)
        return [
            pid for p in items["items"] for pid in node.pids(self.namespace, p["metadata"]["name"])
        ]

    def runtime_pods(self) -> list[JSON]:
        selector = {"labelSelector": "app.kubernetes.io/name=hotswap-runtime"}
        items: list[JSON] = self.client.get(f"/api/v1/namespaces/{self.namespace}/pods", selector)[
            "items"
        ]
        return items

    def ready(self, name: str, replicas: int, timeout: float) -> JSON:
        def check() -> JSON | None:
            body = self.client.get(self.md_path(name))
            st = body.get("status") or {}
            ok = st.get("phase") == "Ready" and st.get("updated") == f"{replicas}/{replicas}"
            return body if ok and st.get("ready") == f"{replicas}/{replicas}" else None

        return wait_for(check, timeout, 1.0, f"{name}: {replicas} pods Ready")

    def swap(
        self, names: dict[str, int], timeout: float, refs: dict[str, JSON] | None = None
    ) -> JSON:
        """Change every named ModelDeployment's checkpoint at once (to ``refs``, else a
        new reference each); time it."""
        refs = dict(refs or {})
        targets = {}
        for name, replicas in names.items():
            if name not in refs:
                refs[name] = checkpoint(self.next_ref)
                self.next_ref += 1
            revision = self.revisions[name] + 1
            targets[name] = (revision, refs[name]["sha256"], replicas)
        processes = {"operator": self.operator_pids(), **self.processes}
        before = scrape(self.client)
        cpu0 = {name: cpu_seconds(pids) for name, pids in processes.items()}
        started = time.monotonic()
        self.progress = Progress(targets, started)
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda n: self.client.patch(self.md_path(n), {"spec": {"checkpoint": refs[n]}}),
                    names,
                )
            )
        converged = self.progress.done.wait(timeout)
        elapsed = time.monotonic() - started
        time.sleep(2.0)  # the last reports' watch events reach the metrics
        after = scrape(self.client)
        cpu = {name: cpu_seconds(pids) - cpu0[name] for name, pids in processes.items()}
        progress, self.progress = self.progress, None
        for name, (revision, _, _) in targets.items():
            if name in progress.status:
                self.revisions[name] = revision
        pods = sorted(progress.pods.values())
        expected = sum(r for _, _, r in targets.values())
        sizes = [len(json.dumps(self.client.get(self.md_path(n)))) for n in list(names)[:5]]
        spent = delta(after, before)
        return {
            "converged": converged,
            "elapsed_s": round(elapsed, 3),
            "pods_reported": len(pods),
            "pods_expected": expected,
            "pod_s": [round(x, 3) for x in pods],
            "status_s": sorted(round(x, 3) for x in progress.status.values()),
            "status_bytes": max(sizes),
            **{f"{k}_cpu_s": None if math.isnan(v) else round(v, 2) for k, v in cpu.items()},
            **spent,
        }

    def fix_revision(self, name: str) -> None:
        self.revisions[name] = int((self.client.get(self.md_path(name))["status"])["revision"])


def pods_per_node(args: argparse.Namespace) -> int:
    """Each hollow node's pod capacity: the most pods the bench runs at once, spread
    evenly with a fifth to spare, so the scheduler cannot pack them into one process."""
    most = int(max([*args.sizes, args.fleet * args.fleet_replicas, 1]))
    return math.ceil(most * 1.2 / int(args.nodes)) + 5


def mean_of(values: list[float | None]) -> float | None:
    """Mean of the values measured (None where an operator process restarted)."""
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 2) if known else None


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None (JSON null) for no values."""
    return percentile(values, q) if values else None


def cpu_per_swap(swaps: list[JSON]) -> JSON:
    """Mean CPU seconds per swap of each process group (operator, API server, ...)."""
    return {
        f"{k}_cpu_s_per_swap": mean_of([s.get(f"{k}_cpu_s") for s in swaps])
        for k in ("operator", "apiserver", "etcd", "hollow")
    }


def figures(swaps: list[JSON], load_seconds: float) -> JSON:
    pod_s = [x for s in swaps for x in s["pod_s"]]
    status_s = [x for s in swaps for x in s["status_s"]]
    n = len(swaps) or 1
    p95 = pct(status_s, 95)

    def mean(key: str) -> float:
        return round(sum(float(s.get(key, 0.0)) for s in swaps) / n, 1)

    return {
        "swaps": len(swaps),
        "converged": all(s["converged"] for s in swaps),
        "pod_p50_s": pct(pod_s, 50),
        "pod_p95_s": pct(pod_s, 95),
        "status_p50_s": pct(status_s, 50),
        "status_p95_s": p95,
        "beyond_load_p95_s": None if p95 is None else round(p95 - load_seconds, 3),
        "status_bytes": max((s["status_bytes"] for s in swaps), default=0),
        "api_writes_per_swap": mean("api_writes"),
        "api_write_bytes_per_swap": mean("api_write_bytes"),
        "api_watch_bytes_per_swap": mean("api_watch_bytes"),
        "api_bytes_per_swap": round(mean("api_write_bytes") + mean("api_watch_bytes")),
        **cpu_per_swap(swaps),
    }


@contextmanager
def hollow_cluster(
    args: argparse.Namespace,
    result: JSON,
    max_pods: int,
    extra: Callable[[int], list[str]] = lambda i: [],
) -> Iterator[Bench]:
    """The control plane, the operator (``args.operator``: "node", in containers on the
    real node, installed by helm with chart values ``args.set``; "process": as a process
    with the runtime defaults the chart renders from them, no real node, no images),
    ``args.nodes`` hollow nodes (``extra(i)``: more flags for node i) and a Bench
    watching the namespace; the logs are kept in ``args.logs``."""
    if getattr(args, "operator", "node") == "process":
        with (
            _operator_process(args, result) as (cluster, namespace, operator),
            _hollow_bench(cluster, None, namespace, args, result, max_pods, extra) as bench,
        ):
            bench.processes["operator"] = [operator]
            yield bench
        return
    real.ensure_binaries()
    real.ensure_images()
    with (
        Cluster(ensure_binary(), node_ip=real.NODE_IP) as cluster,
        real.RealNode(cluster) as node,
    ):
        node.load_images([real.OPERATOR_IMAGE])  # the runtime pods are hollow
        namespace = f"scale-{uuid.uuid4().hex[:6]}"
        helm_install(
            cluster, HELM, "hotswap", namespace, f"watchNamespaces={{{namespace}}}", *args.set
        )
        result["chart_values"] = args.set
        with _hollow_bench(cluster, node, namespace, args, result, max_pods, extra) as bench:
            yield bench


@contextmanager
def _operator_process(args: argparse.Namespace, result: JSON) -> Iterator[tuple[Cluster, str, int]]:
    """The control plane with the CRDs, a namespace, and the operator watching it as a
    process: the cluster, the namespace and the operator's pid."""
    with Cluster(ensure_binary()) as cluster:
        cluster.apply_crd(REPO / "crds")
        namespace = f"scale-{uuid.uuid4().hex[:6]}"
        cluster.rest().post("/api/v1/namespaces", {"metadata": {"name": namespace}})
        defaults = chart_runtime_defaults(HELM, *args.set)
        result["chart_values"] = args.set
        log = cluster.root / "logs" / "operator.log"
        with operator_process(cluster, namespace, log, HOTSWAP_RUNTIME_DEFAULTS=defaults) as op:
            try:
                yield cluster, namespace, op.proc.pid
            finally:
                args.logs.mkdir(parents=True, exist_ok=True)
                shutil.copy(log, args.logs / "operator.log")


@contextmanager
def _hollow_bench(
    cluster: Cluster,
    node: real.RealNode | None,
    namespace: str,
    args: argparse.Namespace,
    result: JSON,
    max_pods: int,
    extra: Callable[[int], list[str]],
) -> Iterator[Bench]:
    """``args.nodes`` hollow node processes and a Bench watching ``namespace``."""
    logs = cluster.root / "logs"
    result["pods_per_node"] = max_pods
    nodes = spawn_nodes(cluster.kubeconfig, args.nodes, args.load_seconds, max_pods, logs, extra)
    try:
        bench = Bench(cluster, node, namespace)
        bench.processes = {
            "apiserver": [cluster.pids["apiserver"]],
            "etcd": [cluster.pids["etcd"]],
            "hollow": [proc.pid for proc in nodes],
        }
        result["report_objects"] = bench.has_reports
        yield bench
        pids = cluster.pids
        result["apiserver_rss_mb"] = round(rss_mb(pids["apiserver"]))
        result["etcd_rss_mb"] = round(rss_mb(pids["etcd"]))
    finally:
        for proc in nodes:
            proc.terminate()
        for proc in nodes:
            proc.wait(30)
        result["logs"] = keep_logs(logs, node, namespace, args.logs)


def run(args: argparse.Namespace) -> JSON:
    result: JSON = {"load_seconds": args.load_seconds, "per_size": {}, "runs": {}}
    with hollow_cluster(args, result, pods_per_node(args)) as bench:
        if args.sizes:
            one_deployment(bench, args, result)
        if args.fleet:
            many_deployments(bench, args, result)
    return result


def keep_logs(logs: Path, node: real.RealNode | None, namespace: str, keep: Path) -> str:
    """Copy the hollow nodes' logs out of the cluster's temp folder (which stop()
    removes) and the operator pods' logs (`kubectl logs`, before the node deletes the
    pods; without a real node the operator process's log is copied by its starter):
    what a pod that never reported was doing."""
    keep.mkdir(parents=True, exist_ok=True)
    for log in logs.glob("hollow-*.log"):
        shutil.copy(log, keep / log.name)
    if node is None:
        return str(keep)
    pods = node.cluster.rest().get(f"/api/v1/namespaces/{namespace}/pods", OPERATOR_PODS)
    for pod in pods["items"]:
        name = pod["metadata"]["name"]
        (keep / f"operator-{name}.log").write_text(node.logs_of(namespace, name))
    return str(keep)


def one_deployment(bench: Bench, args: argparse.Namespace, result: JSON) -> None:
    try:
        scale_through(bench, args, result)
    finally:  # the fleet gets the cluster to itself
        bench.client.patch(bench.md_path("scale"), {"spec": {"replicas": 0}})
        wait_for(lambda: not bench.runtime_pods(), args.setup_timeout, 2.0, "scale: pods gone")


def scale_through(bench: Bench, args: argparse.Namespace, result: JSON) -> None:
    name = "scale"
    cluster = bench.cluster
    for i, size in enumerate(args.sizes):
        began = time.monotonic()
        try:
            if i == 0:
                body = manifest(name, size, checkpoint(0))
                bench.client.post(f"{MD_API}/namespaces/{bench.namespace}/modeldeployments", body)
            else:
                bench.client.patch(bench.md_path(name), {"spec": {"replicas": size}})
            bench.ready(name, size, args.setup_timeout)
        except Exception as exc:
            result["per_size"][str(size)] = {"broke": f"scaling to {size}: {exc}"[:2000]}
            print(f"N={size}: did not become Ready: {exc}", flush=True)
            return
        bench.fix_revision(name)
        print(f"N={size}: Ready in {time.monotonic() - began:.0f}s", flush=True)
        swaps = []
        for k in range(args.swaps):
            one = bench.swap({name: size}, args.timeout)
            swaps.append(one)
            print(f"N={size} swap {k + 1}: {summary_line(one)}", flush=True)
            if not one["converged"]:
                break
        pids = cluster.pids
        figs = figures(swaps, args.load_seconds)
        figs["apiserver_rss_mb"] = round(rss_mb(pids["apiserver"]))
        figs["etcd_rss_mb"] = round(rss_mb(pids["etcd"]))
        result["per_size"][str(size)] = figs
        result["runs"][str(size)] = swaps
        print(f"N={size}: {json.dumps(figs)}", flush=True)
        if not figs["converged"]:
            result["broke_at"] = size
            return


def many_deployments(bench: Bench, args: argparse.Namespace, result: JSON) -> None:
    names = {f"fleet-{i:03d}": args.fleet_replicas for i in range(args.fleet)}
    began = time.monotonic()
    path = f"{MD_API}/namespaces/{bench.namespace}/modeldeployments"
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(lambda n: bench.client.post(path, manifest(n, names[n], checkpoint(0))), names)
        )
    try:
        for name, replicas in names.items():
            left = args.setup_timeout - (time.monotonic() - began)
            bench.ready(name, replicas, max(left, 10))
            bench.fix_revision(name)
    except Exception as exc:
        result["fleet"] = {"broke": f"creating the fleet: {exc}"[:2000]}
        return
    print(f"fleet of {len(names)} Ready in {time.monotonic() - began:.0f}s", flush=True)
    swaps = []
    for k in range(args.swaps):
        one = bench.swap(names, args.timeout)
        one.pop("pod_s")
        swaps.append(one)
        print(f"fleet swap {k + 1}: {summary_line(one)}", flush=True)
    status_s = [x for s in swaps for x in s["status_s"]]
    result["fleet"] = {
        "deployments": len(names),
        "replicas_each": args.fleet_replicas,
        "converged": all(s["converged"] for s in swaps),
        "status_p50_s": pct(status_s, 50),
        "status_p95_s": pct(status_s, 95),
        "api_writes_per_swap": round(sum(s.get("api_writes", 0) for s in swaps) / len(swaps)),
        **cpu_per_swap(swaps),
    }


def summary_line(one: JSON) -> str:
    keep = (
        "converged",
        "elapsed_s",
        "pods_reported",
        "pods_expected",
        "status_bytes",
        "api_writes",
        "api_write_bytes",
        "api_watch_bytes",
        "operator_cpu_s",
        "apiserver_cpu_s",
        "etcd_cpu_s",
        "hollow_cpu_s",
    )
    return json.dumps({k: one.get(k) for k in keep})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,300,1000")
    parser.add_argument("--swaps", type=int, default=3)
    parser.add_argument("--fleet", type=int, default=100, help="ModelDeployments (0: skip)")
    parser.add_argument("--fleet-replicas", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=8, help="hollow node processes")
    parser.add_argument("--load-seconds", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=300, help="seconds a swap may take")
    parser.add_argument(
        "--setup-timeout", type=float, default=900, help="seconds to scale up or create"
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--set", action="append", default=[], help="a chart value, KEY=VALUE (repeatable)"
    )
    parser.add_argument(
        "--logs",
        type=Path,
        default=REPO / "bench" / "results" / f"scale-logs-{time.strftime('%Y%m%d-%H%M%S')}",
        help="where the hollow nodes' and operator pods' logs are kept",
    )
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    result = run(args)
    result["load_average"] = os.getloadavg()
    measured = [s for s in args.sizes if result["per_size"].get(str(s), {}).get("converged")]
    top = result["per_size"][str(measured[-1])] if measured else {}
    result["summary"] = {
        "pods": measured[-1] if measured else 0,
        "converge_p95_s": top.get("status_p95_s"),
        "status_bytes": top.get("status_bytes"),
        "api_writes_per_swap": top.get("api_writes_per_swap"),
        "api_bytes_per_swap": top.get("api_bytes_per_swap"),
        "fleet_converge_p95_s": (result.get("fleet") or {}).get("status_p95_s"),
        "broke_at": result.get("broke_at"),
    }
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    per_size = {k: {kk: vv for kk, vv in v.items()} for k, v in result["per_size"].items()}
    print(
        json.dumps(
            {
                **result["summary"],
                "per_size": per_size,
                "fleet": result.get("fleet"),
                "load_average": result["load_average"],
            },
            sort_keys=True,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
