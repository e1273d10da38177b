"""Benchmark: hot swaps under HTTP load against a real runtime process, versus a restart.

For each model (torchvision resnet18, resnet50) it starts ``python -m hotswap_runtime``
on loopback, drives closed-loop HTTP clients, and measures:

* interleaved windows (``--repeats`` pairs): a steady window (no swap) of at least
  ``--window-requests`` requests (1000), then a swap window of swaps back to back until
  at least as many requests overlapped a swap, while model.json flips through a pool
  of four checkpoints (the cache bound is 2.5 models, so every swap downloads and
  verifies its file again: no cache shortcut). ``p99_ratio`` is the median over the
  pairs of (swap window p99 / steady window p99); ``p99_ratio_spread`` its min and max;
* each swap's phases as the runtime reports them, and the process RSS growth from after
  the warm-up swaps to after the last swap;
* the baseline users have today: SIGTERM the process and start it again on the new
  checkpoint under the same load (clients retry 10 ms after an error), counting failed
  requests and the time from the kill to the first answer of a request sent after it;
* with ``--device cuda``: the plain host-to-device copy time of the weights from pinned
  memory, and ``activation_over_h2d`` = (standby load + activate) / that copy time.

With ``--peer ray`` each model then runs again on Ray Serve (bench/peer_ray.py: the same
checkpoints, request body, clients and interleaved windows, one replica, updated in place
through ``user_config`` and ``reconfigure``); its figures go under the model's ``peer``,
and the summary's ``peer`` sets hotswap's and Ray's failed requests, p99 ratio (and
spread) and time until the new weights serve side by side.

The last line printed is one JSON object: per-model results under ``models``; at the
top level the numbers of the last (largest) model, except ``swaps`` and
``failed_requests`` (totals over all models) and ``p99_ratio`` (worst model).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hotswap_contract.wire import SWAP_PHASES

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import (
    LoadGenerator,
    Runtime,
    Swap,
    Window,
    free_port,
    interleaved_windows,
    median,
    percentile,
    poll,
    rss_mb,
    window_figures,
)

PHASES = SWAP_PHASES
POOL = 4


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    torch.set_num_threads(1)
    results: dict[str, dict[str, Any]] = {}
    root = Path(tempfile.mkdtemp(prefix="hotswap-bench-"))
    try:
        for name in args.models:
            print(f"== {name} on {args.device}", file=sys.stderr, flush=True)
            results[name] = ModelBench(name, args, root / name).run()
            print(json.dumps(results[name]), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = _summary(results, args)
    text = json.dumps(summary)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="resnet18 only, 3 pairs of 300-request windows"
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--models", help="comma-separated torchvision names")
    p.add_argument(
        "--repeats", type=int, help="steady/swap window pairs, interleaved (default 7; quick 3)"
    )
    p.add_argument(
        "--window-requests", type=int, help="requests per window (default 1000; quick 300)"
    )
    p.add_argument("--clients", type=int, help="concurrent clients (cpu 4, cuda 8)")
    p.add_argument("--input-size", type=int, help="image side (cpu 64, cuda 224)")
    p.add_argument("--gap-seconds", type=float, help="pause between swaps (default 0.05)")
    p.add_argument(
        "--peer",
        choices=["ray"],
        help="also run the same windows on a peer (ray: Ray Serve, the `peer` extra)",
    )
    p.add_argument("--out", help="also write the JSON object to this file")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    args.models = (
        args.models.split(",")
        if args.models
        else (["resnet18"] if args.quick else ["resnet18", "resnet50"])
    )
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.window_requests = args.window_requests or (300 if args.quick else 1000)
    args.clients = args.clients or (8 if cuda else 4)
    args.input_size = args.input_size or (224 if cuda else 64)
    args.gap_seconds = args.gap_seconds if args.gap_seconds is not None else 0.05
    return args


class ModelBench:
    """One model: checkpoints, runtime process, load, swaps, restart baseline."""

    def __init__(self, name: str, args: argparse.Namespace, root: Path) -> None:
        self.name = name
        self.args = args
        self.root = root
        self.config_dir = root / "config"
        self.revision = 0
        self.files: list[tuple[str, str]] = []

    def run(self) -> dict[str, Any]:
        model_bytes = self._checkpoints()
        self._publish(1)
        runtime = Runtime(self._env(model_bytes), free_port(), self.root / "runtime.log")
        runtime.start()
        load = LoadGenerator(
            f"{runtime.url}/v2/models/{self.name}/infer", self._body(), self.args.clients
        )
        load.start()
        try:
            result = self._measure(runtime, load, model_bytes)
        finally:
            load.stop()
            runtime.stop()
        if self.args.peer == "ray":
            result["peer"] = self._ray_peer()
        return result

    def _ray_peer(self) -> dict[str, Any]:
        """The same windows, load and checkpoints on Ray Serve (bench/peer_ray.py)."""
        from bench.peer_ray import RayPeer

        size = self.args.input_size
        files = [Path(uri.removeprefix("file://")) for uri, _ in self.files]
        peer = RayPeer(self.name, files, [3, size, size])
        print(f"== {self.name}: peer Ray Serve", file=sys.stderr, flush=True)
        load = LoadGenerator(peer.url, self._body(), self.args.clients)
        try:
            peer.start()
            load.start()
            t_begin, _ = _warm_up(load, peer.update)
            t0 = time.perf_counter()
            windows, updates = interleaved_windows(
                load,
                peer.update,
                self.args.repeats,
                self.args.window_requests,
                self.args.gap_seconds,
            )
            t_end = time.perf_counter()
        finally:
            load.stop()
            peer.stop()  # whatever failed: no Ray process outlives the bench
        visible = [u["visible_s"] for u in updates]
        return {
            **peer.describe(),
            "updates": len(updates),
            "failed_requests": sum(not s.ok for s in load.since(t_begin, t_end)),
            **window_figures(windows),
            "measured_seconds": round(t_end - t0, 1),
            "update_visible_seconds_p50": round(median(visible), 4),
            "update_visible_seconds_p99": round(percentile(visible, 99), 4),
            # one process id: every update was in place, no replica was replaced
            "replica_processes": len(peer.pids),
        }

    def _measure(self, runtime: Runtime, load: LoadGenerator, model_bytes: int) -> dict[str, Any]:
        assert runtime.process is not None
        t_begin, warm = _warm_up(load, lambda: self._swap(runtime))
        rss_before = rss_mb(runtime.process.pid)
        t0 = time.perf_counter()
        windows, swaps = interleaved_windows(
            load,
            lambda: self._swap(runtime),
            self.args.repeats,
            self.args.window_requests,
            self.args.gap_seconds,
        )
        time.sleep(1.0)
        rss_after = rss_mb(runtime.process.pid)
        t_end = time.perf_counter()
        failed = sum(not s.ok for s in load.since(t_begin, t_end))
        restart = self._restart(runtime, load)
        return self._result(
            windows, swaps, warm, failed, rss_before, rss_after, model_bytes, restart, t_end - t0
        )

    def _result(
        self,
        windows: list[Window],
        swaps: list[dict[str, Any]],
        warm: list[dict[str, Any]],
        failed: int,
        rss_before: float,
        rss_after: float,
        model_bytes: int,
        restart: dict[str, Any],
        seconds: float,
    ) -> dict[str, Any]:
        phases = {p: median([s["phases"].get(p, 0.0) for s in swaps]) for p in PHASES}
        totals = [sum(s["phases"].values()) for s in swaps]
        model_mb = model_bytes / 2**20
        n = len(swaps)
        result: dict[str, Any] = {
            "model": self.name,
            "device": self.args.device,
            "input_shape": [1, 3, self.args.input_size, self.args.input_size],
            "clients": self.args.clients,
            "model_mb": round(model_mb, 1),
            "swaps": n,
            "swap_modes": dict(collections.Counter(s["mode"] for s in swaps)),
            "failed_requests": failed,
            **window_figures(windows),
            "measured_seconds": round(seconds, 1),
            "swap_seconds": {k: round(v, 4) for k, v in phases.items()},
            "swap_total_seconds_p50": round(median(totals), 4),
            "swap_total_seconds_p99": round(percentile(totals, 99), 4),
            "swap_visible_seconds_p50": round(median([s["visible_s"] for s in swaps]), 4),
            "fresh_build_load_seconds": round(warm[0]["phases"].get("load", 0.0), 4),
            "memory_growth_swaps": n,
            f"memory_growth_mb_after_{n}_swaps": round(rss_after - rss_before, 1),
            "memory_growth_pct_of_model": round(100 * (rss_after - rss_before) / model_mb, 2),
            "rss_mb_after_warmup": round(rss_before, 1),
            **restart,
        }
        if self.args.device == "cuda":
            result.update(self._cuda_figures(swaps))
        return result

    def _cuda_figures(self, swaps: list[dict[str, Any]]) -> dict[str, Any]:
        h2d = _h2d_seconds(Path(self.files[0][0].removeprefix("file://")))
        standby = [s for s in swaps if s["mode"] == "standby"]
        activation = median([s["phases"]["load"] + s["phases"]["activate"] for s in standby])
        return {
            "h2d_copy_ms": round(1000 * h2d, 3),
            "activation_ms": round(1000 * activation, 3),
            "activation_over_h2d": round(activation / h2d, 3),
        }

    # ---- swaps and restart --------------------------------------------------------

    def _swap(self, runtime: Runtime) -> dict[str, Any]:
        self.revision += 1
        start = time.perf_counter()
        self._publish(self.revision)
        meta = poll(
            lambda: (m := runtime.metadata(self.name))["model_version"] == str(self.revision) and m,
            120,
            f"revision {self.revision}",
        )
        end = time.perf_counter()
        if meta["last_swap"]["revision"] != self.revision:  # written a moment after
            meta = poll(
                lambda: (
                    (m := runtime.metadata(self.name))["last_swap"]["revision"] == self.revision
                    and m
                ),
                30,
                f"the record of the swap to revision {self.revision}",
            )
        swap = meta["last_swap"]
        return {
            "start": start,
            "end": end,
            "visible_s": end - start,
            "phases": swap["phases"],
            "mode": swap["mode"],
        }

    def _restart(self, runtime: Runtime, load: LoadGenerator) -> dict[str, Any]:
        """Today's way: stop the process, start it on the new checkpoint, same load."""
        self.revision += 1
        self._publish(self.revision)
        t_kill = time.perf_counter()
        runtime.stop()
        t_exit = time.perf_counter()
        runtime.start(wait_ready=False)
        first = poll(
            lambda: next((s for s in load.since(t_exit) if s.ok), None),
            180,
            "an answer from the restarted process",
        )
        time.sleep(1.0)
        answers = sorted(s.end for s in load.samples if s.ok and s.end >= t_kill - 1.0)
        gap = max(b - a for a, b in itertools.pairwise(answers))
        failed = sum(not s.ok for s in load.samples if s.end >= t_kill)
        return {
            "restart_unavailable_s": round(gap, 3),
            "restart_failed_requests": failed,
            "restart_first_answer_after_kill_s": round(first.end - t_kill, 3),
            "restart_stop_s": round(t_exit - t_kill, 3),
            "restart_client_retry_ms": 10,
        }

    # ---- inputs -------------------------------------------------------------------

    def _checkpoints(self) -> int:
        import safetensors.torch
        import torchvision

        self.root.mkdir(parents=True)
        for seed in range(1, POOL + 1):
            torch.manual_seed(seed)
            model = torchvision.models.get_model(self.name, weights=None)
            path = self.root / f"{self.name}-{seed}.safetensors"
            safetensors.torch.save_file(model.state_dict(), str(path))
            self.files.append((f"file://{path}", _sha256(path)))
        return Path(self.files[0][0].removeprefix("file://")).stat().st_size

    def _publish(self, revision: int) -> None:
        from hotswap_contract.wire import CONFIG_KEY

        uri, sha = self.files[(revision - 1) % POOL]
        doc = {
            "name": self.name,
            "generation": revision,
            "stable": {
                "revision": revision,
                "model": {
                    "architecture": f"torchvision/{self.name}",
                    "args": {},
                    "inputShape": [3, self.args.input_size, self.args.input_size],
                },
                "checkpoint": {"uri": uri, "sha256": sha},
            },
        }
        self.config_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.config_dir / f".{CONFIG_KEY}.tmp"
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.config_dir / CONFIG_KEY)

    def _env(self, model_bytes: int) -> dict[str, str]:
        cpu = self.args.device == "cpu"
        return {
            "HOTSWAP_MODEL_NAME": self.name,
            "HOTSWAP_CONFIG_DIR": str(self.config_dir),
            "HOTSWAP_CACHE_DIR": str(self.root / "cache"),
            "HOTSWAP_FILE_ROOTS": str(self.root),  # the checkpoints are written there
            "HOTSWAP_CACHE_MAX_BYTES": str(int(2.5 * model_bytes)),
            "HOTSWAP_DEVICE": self.args.device,
            "HOTSWAP_RESYNC_SECONDS": "300",
            "HOTSWAP_TORCH_THREADS": "1" if cpu else "4",
            "OMP_NUM_THREADS": "1" if cpu else "4",
            "HOTSWAP_LOG_LEVEL": "warning",
        }

    def _body(self) -> bytes:
        size = self.args.input_size
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": [round(v, 4) for v in x.flatten().tolist()],
                }
            ]
        }
        return json.dumps(body).encode()


def _warm_up(load: LoadGenerator, swap: Callable[[], Swap]) -> tuple[float, list[Swap]]:
    """Wait for 20 answers, swap three times (for hotswap: a fresh build, then standbys),
    let the allocations settle; when that began, and the swaps."""
    t_begin = time.perf_counter()
    poll(lambda: len(load.since(t_begin)) >= 20, 60, "warm-up requests")
    warm = [swap() for _ in range(3)]
    time.sleep(1.0)
    return t_begin, warm


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _h2d_seconds(path: Path) -> float:
    """Median time of one bulk copy of the checkpoint's bytes from pinned memory to the GPU."""
    import safetensors.torch

    state = safetensors.torch.load_file(str(path))
    total = sum(t.numel() * t.element_size() for t in state.values())
    host = torch.empty(total, dtype=torch.uint8, pin_memory=True)
    device = torch.empty(total, dtype=torch.uint8, device="cuda")
    times = []
    for _ in range(12):
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        start.record()
        device.copy_(host, non_blocking=True)
        end.record()
        end.synchronize()
        times.append(float(start.elapsed_time(end)) / 1000)
    return median(times[2:])


def _summary(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    headline = results[args.models[-1]]
    summary = dict(headline)
    summary.update(
        {
            "headline_model": args.models[-1],
            "quick": args.quick,
            "swaps": sum(r["swaps"] for r in results.values()),
            "failed_requests": sum(r["failed_requests"] for r in results.values()),
            "p99_ratio": max(r["p99_ratio"] for r in results.values()),
            "models": results,
        }
    )
    if args.peer:
        summary["peer"] = peer_summary(results, args.models[-1])
    return summary


def peer_summary(results: dict[str, dict[str, Any]], headline: str) -> dict[str, Any]:
    """hotswap's figures next to its peer's: failed requests summed over the models, the
    worst model's p99 ratio and its spread, the headline model's time from the update call
    until the replica serves the new weights (median over updates)."""
    hotswap = list(results.values())
    peer = [r["peer"] for r in hotswap]
    worst = max(hotswap, key=lambda r: r["p99_ratio"])
    worst_peer = max(peer, key=lambda r: r["p99_ratio"])
    return {
        "system": f"{peer[0]['system']} {peer[0]['ray_version']}",
        "replicas": peer[0]["replicas"],
        "failed_requests": {
            "hotswap": sum(r["failed_requests"] for r in hotswap),
            "peer": sum(r["failed_requests"] for r in peer),
        },
        "p99_ratio": {"hotswap": worst["p99_ratio"], "peer": worst_peer["p99_ratio"]},
        "p99_ratio_spread": {
            "hotswap": worst["p99_ratio_spread"],
            "peer": worst_peer["p99_ratio_spread"],
        },
        "visible_seconds_p50": {
            "hotswap": results[headline]["swap_visible_seconds_p50"],
            "peer": results[headline]["peer"]["update_visible_seconds_p50"],
        },
    }


if __name__ == "__main__":
    raise SystemExit(main())
