"""Benchmark: fleet distribution — a rollout of one sharded checkpoint to N pods, with
peer transfer on and off, from a store capped at a fixed bandwidth.

The setup of bench/scale.py (`hollow_cluster`): the real control plane, the operator
(``--operator process``, the default: a process with the runtime defaults the chart
renders, devcluster/operator_process.py, so no real node, root or images are needed;
``node``: installed with helm in containers on the real node), and HOLLOW runtime
pods (devcluster/hollow.py) started with ``--fetch``: each pod runs the runtime's real
settings, checkpoint store (download, sha256, cache), peer-first fetch (roster read from
the operator's ``<name>-peers`` ConfigMap with the pod's own token) and peer port (bound
to the pod's loopback address, with the token from the operator's ``<name>-peer-<uid>``
Secret, which the hollow node writes where kubelet would mount it); only the model load
is a stand-in. The store is devcluster/capped_store.py: a real HTTP server on loopback
whose connections share ONE token bucket of ``--store-mib-s`` MiB/s and that counts the
bytes it sends. The chart's ``policy.fetchAllowedNetworks`` lets the pods reach it.

For each N of ``--sizes`` and each mode (peers on, then ``spec.distribution.peers:
false``): the ModelDeployment is set to N replicas, that mode and a tiny base
checkpoint, and the bench waits until N pods are Ready, the ModelDeployment Ready and,
with peers on, the operator's peers.json lists exactly those pods. Then
``spec.checkpoint`` is patched to a fresh checkpoint of ``--checkpoint-mib`` MiB in
``--shards`` random shards (new bytes: nothing is cached anywhere), and the bench
times, by watching the pods' ModelReplica reports, until every pod serves it. Per phase:

* ``store_read_ratio``: bytes the store sent during the rollout over the checkpoint's
  size (manifest and shards);
* ``converge_p50_s``/``p95``/``max``: seconds from the patch until each pod reported
  the new revision Serving; ``converged``: all N did within ``--timeout``;
* ``peer_bytes`` / ``store_bytes_reported`` / ``peers_used_max`` / ``peer_failures``:
  the sums of the pods' ``status.fetched`` (ModelReplica) for that fetch;
* ``rss_peak_mb_per_pod``: the hollow node processes' peak RSS (VmHWM, reset before the
  phase through /proc/<pid>/clear_refs) summed and divided by N, and
  ``rss_base_mb_per_pod`` the same of their RSS just before the patch (the processes'
  own overhead, torch's import included, is in both); ``cpu_s_per_pod``: the hollow
  processes' user+system CPU over the rollout (+2 s) divided by N. A hollow process
  holds many pods, so these are per-pod shares, not one pod's own figures;
* the operator, API server and etcd CPU and API writes of bench/scale.py's ``swap``.

Between phases the checkpoint's files are deleted from the store folder and from every
pod's cache. ``--checkpoint-mib`` gives one size per N (``auto``: the largest multiple
of 16 MiB whose N cached copies leave ``--disk-margin-gib`` free on the cache's disk).

    python bench/distribution.py [--sizes 10,100,300] [--checkpoint-mib 256,256,auto]
        [--shards 8] [--store-mib-s 100] [--operator process|node] [--out FILE]

``--operator node`` needs root (the real node; one per machine). Prints one JSON line per phase; the
last line is the summary: ``pods`` (the largest N measured), ``store_read_ratio`` (peers
on), ``store_read_ratio_direct``, ``converge_p95_s``, ``converge_p95_s_direct`` at that
N, and ``per_size`` with both modes' figures at every N.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import scale
from bench._common import REPO, percentile, rss_mb
from bench.scale import MD_API, Bench, hollow_cluster
from devcluster.capped_store import CappedStore, random_checkpoint
from devcluster.waiting import wait_for
from hotswap_contract.wire import PEERS_KEY, peers_configmap_name

JSON = dict[str, Any]
MIB = 1 << 20
NAME = "dist"
BASE_BYTES = 64 << 10  # the checkpoint pods hold between phases
AUTO_STEP_MIB = 16
MODES = ("peers", "direct")


# -- pure parts (tests/unit/bench/test_bench_distribution.py) ----------------------------


def pct(values: list[float], q: float) -> float | None:
    return round(percentile(values, q), 3) if values else None


def auto_mib(pods: int, free_bytes: int, margin_bytes: int, shards: int) -> int:
    """The largest checkpoint in MiB, a multiple of AUTO_STEP_MIB, whose ``pods`` cached
    copies and the store's own leave ``margin_bytes`` of ``free_bytes``; 0 when not even
    ``shards`` MiB fit."""
    room = (free_bytes - margin_bytes) / (pods + 1) / MIB
    mib = int(room // AUTO_STEP_MIB) * AUTO_STEP_MIB
    return mib if mib >= max(1, shards) else 0


def checkpoint_sizes(spec: str, sizes: list[int]) -> list[str]:
    """``--checkpoint-mib``: one entry per size (MiB or ``auto``); a shorter list repeats
    its last entry."""
    given = [s.strip() for s in spec.split(",") if s.strip()]
    if not given or any(s != "auto" and not s.isdigit() for s in given):
        raise SystemExit(f"--checkpoint-mib {spec!r}: give MiB or 'auto' per size")
    return [given[min(i, len(given) - 1)] for i in range(len(sizes))]


def fetched_totals(reports: list[JSON]) -> JSON:
    """The pods' ``status.fetched`` (ModelReplica) summed: where their bytes came from."""
    figures = [(r.get("status") or {}).get("fetched") or {} for r in reports]
    return {
        "reports_with_fetched": sum(1 for f in figures if f),
        "store_bytes_reported": sum(int(f.get("storeBytes", 0)) for f in figures),
        "peer_bytes": sum(int(f.get("peerBytes", 0)) for f in figures),
        "cached_bytes": sum(int(f.get("cachedBytes", 0)) for f in figures),
        "peers_used_max": max((int(f.get("peers", 0)) for f in figures), default=0),
        "peer_failures": sum(int(f.get("peerFailures", 0)) for f in figures),
    }


def phase_figures(
    pods: int, nbytes: int, store_sent: int, pod_s: list[float], converged: bool
) -> JSON:
    """A rollout's store read ratio and convergence times."""
    return {
        "pods": pods,
        "checkpoint_bytes": nbytes,
        "store_bytes": store_sent,
        "store_read_ratio": round(store_sent / nbytes, 3) if nbytes else None,
        "converged": converged and len(pod_s) >= pods,
        "pods_reported": len(pod_s),
        "converge_p50_s": pct(pod_s, 50),
        "converge_p95_s": pct(pod_s, 95),
        "converge_max_s": round(max(pod_s), 3) if pod_s else None,
    }


def summary(per_size: dict[str, JSON]) -> JSON:
    """The last line: figures at the largest N whose two modes were measured, and the
    targets (store_read_ratio <= 1.5 at every N; 5x faster than direct at N >= 100)."""
    measured = sorted(int(n) for n, v in per_size.items() if "peers" in v and "direct" in v)
    top = per_size[str(measured[-1])] if measured else {}
    on, off = top.get("peers", {}), top.get("direct", {})
    speedups = {
        n: _ratio(
            per_size[str(n)]["direct"].get("converge_p95_s"),
            per_size[str(n)]["peers"].get("converge_p95_s"),
        )
        for n in measured
    }
    ratios = [per_size[str(n)]["peers"].get("store_read_ratio") for n in measured]
    return {
        "pods": measured[-1] if measured else 0,
        "store_read_ratio": on.get("store_read_ratio"),
        "store_read_ratio_direct": off.get("store_read_ratio"),
        "converge_p95_s": on.get("converge_p95_s"),
        "converge_p95_s_direct": off.get("converge_p95_s"),
        "speedup_p95": {str(n): s for n, s in speedups.items()},
        "target_ratio_met": bool(ratios) and all(r is not None and r <= 1.5 for r in ratios),
        "target_speedup_met": all(s is not None and s >= 5 for n, s in speedups.items() if n >= 100)
        if any(n >= 100 for n in measured)
        else None,
    }


def _ratio(slow: float | None, fast: float | None) -> float | None:
    return round(slow / fast, 2) if slow is not None and fast else None


# -- the run -----------------------------------------------------------------------------


def manifest(replicas: int, ref: JSON, peers: bool) -> JSON:
    """bench/scale.py's ModelDeployment (hollow pods, AllAtOnce) with peers on or off."""
    body = scale.manifest(NAME, replicas, ref)
    body["spec"]["distribution"] = {"peers": peers}
    return body


class Distribution:
    """The phases of one run: a store, the hollow cluster's Bench, the pods' folders."""

    def __init__(
        self, bench: Bench, store: CappedStore, pods_root: Path, args: argparse.Namespace
    ) -> None:
        self.bench = bench
        self.store = store
        self.pods_root = pods_root
        self.args = args
        self.made = 0
        self.base = self.checkpoint(BASE_BYTES, 1)[0]
        self.created = False

    @property
    def client(self) -> Any:
        return self.bench.client

    def checkpoint(self, nbytes: int, shards: int) -> tuple[JSON, int, set[str], Path]:
        """A fresh random checkpoint in the store: its reference, size, sha256s, folder."""
        self.made += 1
        folder = self.store.root / f"c{self.made}"
        path, sha = random_checkpoint(folder, nbytes, shards)
        doc = json.loads(path.read_text())
        shas = {sha, *(e["sha256"] for e in doc["shards"].values())}
        size = path.stat().st_size + sum(int(e["size"]) for e in doc["shards"].values())
        ref = {"uri": f"{self.store.url}/{folder.name}/{path.name}", "sha256": sha}
        return ref, size, shas, folder

    def settle(self, replicas: int, peers: bool) -> None:
        """N pods of this mode serving the base checkpoint, all Ready; with peers on,
        the operator's peers.json lists exactly them."""
        path = f"{MD_API}/namespaces/{self.bench.namespace}/modeldeployments"
        if not self.created:
            body = manifest(replicas, self.base, peers)
            generation = self.client.post(path, body)["metadata"]["generation"]
            self.created = True
        else:
            spec = {"replicas": replicas, "checkpoint": self.base, "distribution": {"peers": peers}}
            generation = self.client.patch(f"{path}/{NAME}", {"spec": spec})["metadata"][
                "generation"
            ]
        timeout = self.args.setup_timeout
        wait_for(
            lambda: self._settled(replicas, generation, peers),
            timeout,
            1.0,
            f"{NAME}: {replicas} pods settled",
        )
        self.bench.fix_revision(NAME)

    def _settled(self, replicas: int, generation: int, peers: bool) -> bool:
        body = self.client.get(self.bench.md_path(NAME))
        st = body.get("status") or {}
        want = f"{replicas}/{replicas}"
        if (st.get("observedGeneration") or 0) < generation or st.get("phase") != "Ready":
            return False
        if st.get("updated") != want or st.get("ready") != want:
            return False
        pods = [p for p in self.bench.runtime_pods() if not p["metadata"].get("deletionTimestamp")]
        if len(pods) != replicas or len(self.bench.runtime_pods()) != replicas:
            return False
        if not peers:
            return True
        cm = self.client.get(
            f"/api/v1/namespaces/{self.bench.namespace}/configmaps/{peers_configmap_name(NAME)}"
        )
        listed = {p["name"]: p["ip"] for p in json.loads(cm["data"][PEERS_KEY])["peers"]}
        return listed == {p["metadata"]["name"]: p["status"].get("podIP") for p in pods}

    def phase(self, replicas: int, mode: str, mib: int) -> JSON:
        """One measured rollout of a fresh ``mib`` MiB checkpoint."""
        peers = mode == "peers"
        self.settle(replicas, peers)
        ref, nbytes, shas, folder = self.checkpoint(mib * MIB, self.args.shards)
        hollow = self.bench.processes["hollow"]
        for pid in hollow:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        rss_base = sum(rss_mb(pid) for pid in hollow)
        sent = self.store.sent
        one = self.bench.swap({NAME: replicas}, self.args.timeout, {NAME: ref})
        store_sent = self.store.sent - sent
        rss_peak = sum(rss_mb(pid, "VmHWM") for pid in hollow)
        reports = self.client.get(
            f"{MD_API}/namespaces/{self.bench.namespace}/modelreplicas",
            {"labelSelector": f"hotswap.dev/model-deployment={NAME}"},
        )["items"]
        figures = {
            "mode": mode,
            "checkpoint_mib": mib,
            "shards": self.args.shards,
            "store_mib_s": self.args.store_mib_s,
            **phase_figures(replicas, nbytes, store_sent, one["pod_s"], one["converged"]),
            **fetched_totals(reports),
            "rss_base_mb_per_pod": round(rss_base / replicas, 1),
            "rss_peak_mb_per_pod": round(rss_peak / replicas, 1),
            "cpu_s_per_pod": _per(one.get("hollow_cpu_s"), replicas),
            "hollow_processes": len(hollow),
            **{
                k: one.get(k)
                for k in (
                    "operator_cpu_s",
                    "apiserver_cpu_s",
                    "etcd_cpu_s",
                    "hollow_cpu_s",
                    "api_writes",
                )
            },
            "load_average": os.getloadavg(),
        }
        self.forget(shas, folder)
        return figures

    def forget(self, shas: set[str], folder: Path) -> None:
        """Delete a checkpoint's files from the store and from every pod's cache."""
        shutil.rmtree(folder, ignore_errors=True)
        for cache in self.pods_root.glob("*/*/var/cache/hotswap"):
            for sha in shas:
                (cache / sha).unlink(missing_ok=True)

    def mib_for(self, replicas: int, entry: str) -> int:
        if entry != "auto":
            return int(entry)
        free = shutil.disk_usage(self.pods_root).free
        return auto_mib(replicas, free, int(self.args.disk_margin_gib * 2**30), self.args.shards)


def _per(total: float | None, pods: int) -> float | None:
    return None if total is None or math.isnan(total) else round(total / pods, 3)


def run(args: argparse.Namespace) -> JSON:
    result: JSON = {"per_size": {}, "phases": []}
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    (work / "store").mkdir(parents=True)
    pods_root = work / "pods"
    pods_root.mkdir()
    most = max(args.sizes)
    max_pods = math.ceil(most * 1.2 / args.nodes) + 5

    def flags(i: int) -> list[str]:
        return ["--fetch", str(pods_root), "--pod-network", f"127.{100 + i}.0.0/16"]

    args.set = [*args.set, "policy.fetchAllowedNetworks={127.0.0.1/32}"]
    try:
        with (
            CappedStore(work / "store", args.store_mib_s) as store,
            hollow_cluster(args, result, max_pods, flags) as bench,
        ):
            dist = Distribution(bench, store, pods_root, args)
            for replicas, entry in zip(args.sizes, args.checkpoint_mib, strict=True):
                mib = dist.mib_for(replicas, entry)
                per: JSON = {"checkpoint_mib": mib, "auto": entry == "auto"}
                result["per_size"][str(replicas)] = per
                if mib <= 0:
                    per["skipped"] = "no checkpoint fits the disk with the margin"
                    continue
                for mode in args.modes:
                    try:
                        figures = dist.phase(replicas, mode, mib)
                    except Exception as exc:
                        per[f"{mode}_broke"] = f"{type(exc).__name__}: {exc}"[:2000]
                        print(
                            json.dumps(
                                {"pods": replicas, "mode": mode, "broke": per[f"{mode}_broke"]}
                            ),
                            flush=True,
                        )
                        break
                    per[mode] = figures
                    result["phases"].append(figures)
                    print(json.dumps(figures, sort_keys=True), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,300")
    parser.add_argument("--checkpoint-mib", default="256,256,auto", help="MiB or 'auto', per size")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--modes", default=",".join(MODES), help="peers, direct or both")
    parser.add_argument("--store-mib-s", type=float, default=100.0)
    parser.add_argument("--nodes", type=int, default=8, help="hollow node processes")
    parser.add_argument(
        "--operator",
        choices=("process", "node"),
        default="process",
        help="the operator as a process, or in containers on the real node",
    )
    parser.add_argument("--load-seconds", type=float, default=0.0, help="the stand-in load")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds a rollout may take")
    parser.add_argument("--setup-timeout", type=float, default=900, help="seconds to settle")
    parser.add_argument("--disk-margin-gib", type=float, default=6.0)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/hotswap-dist"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--set", action="append", default=[], help="a chart value (repeatable)")
    parser.add_argument(
        "--logs",
        type=Path,
        default=REPO / "bench" / "results" / f"distribution-logs-{time.strftime('%Y%m%d-%H%M%S')}",
    )
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.modes = [m for m in args.modes.split(",") if m]
    if not set(args.modes) <= set(MODES):
        parser.error(f"--modes: from {MODES}")
    args.checkpoint_mib = checkpoint_sizes(args.checkpoint_mib, args.sizes)
    result = run(args)
    result["summary"] = summary(result["per_size"])
    result["load_average"] = os.getloadavg()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(
        json.dumps(
            {
                **result["summary"],
                "per_size": result["per_size"],
                "load_average": result["load_average"],
            },
            sort_keys=True,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
