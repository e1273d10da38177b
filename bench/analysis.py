"""Benchmark: the shadow comparison on live traffic (docs/analysis.md).

One ``python -m hotswap_runtime`` process on loopback serves the runtime's
``python/hotswap_runtime.examples:mlp`` (``--hidden``, ``--layers``; torch on one
thread) from a model.json it reads in a folder, as a pod does. A client sends requests
at a fixed rate (open loop: request i leaves at t0 + i / rate) from a pool of inputs in
which a chosen share flips top-1 between the serving weights and the disagreeing ones
(devcluster/disagreeing.py: exact shares by construction). Measured:

* detection: for each share (``--shares``), ``--runs`` new revisions with the
  disagreeing weights at ``--rate`` requests/s: the seconds from the start of the
  comparison to its decision and the samples it scored (the pod's own figures), and the
  share of runs refused;
* false refusals: ``--false-refusal-runs`` new revisions with the serving weights saved
  again (identical outputs) at ``--false-refusal-rate`` requests/s: how many were refused;
* serving p99 with the shadow on against off in the same run: ``--p99-pairs`` pairs of a
  window in which a comparison runs (identical weights; from its start, as the pod
  reports it, to its decision: the load before it is bench/swap.py's subject), then a
  window as long with none, at ``--rate``; ``shadow_p99_ratio`` is the median of
  (on p99 / off p99).

The last line printed is one JSON object with ``detect_s`` (median seconds by share,
keys as given, e.g. "0.05"), ``false_refusal_runs``, ``false_refusal_rate`` and
``shadow_p99_ratio``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import Runtime, free_port, median, percentile, poll
from devcluster import checkpoints, disagreeing

MODEL = "mlp"
DECIDED = ("Failed", "Passed", "Activated")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=20.0, help="requests/s (default 20)")
    p.add_argument("--shares", default="0.01,0.05,0.1", help="disagreement shares")
    p.add_argument("--runs", type=int, default=5, help="revisions per share (default 5)")
    p.add_argument("--false-refusal-runs", type=int, default=100)
    p.add_argument("--false-refusal-rate", type=float, default=200.0, help="requests/s")
    p.add_argument("--p99-pairs", type=int, default=3)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--max-disagreement", type=float, default=0.01)
    p.add_argument(
        "--quick", action="store_true", help="2 runs per share, 10 false-refusal runs, 1 pair"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.false_refusal_runs, args.p99_pairs = 2, 10, 1
    return args


class Traffic:
    """Requests at a fixed rate from a pool of bodies; every answer's latency and status."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.bodies: list[bytes] = []
        self.rate = 1.0
        self.results: list[tuple[float, float, bool]] = []  # start, end, ok
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def set(self, x: torch.Tensor, rate: float) -> None:
        rows = [[round(v, 6) for v in row] for row in x.tolist()]
        bodies = [_body(row) for row in rows]
        with self._lock:
            self.bodies, self.rate = bodies, rate

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def between(self, t0: float, t1: float) -> list[tuple[float, float, bool]]:
        with self._lock:
            return [r for r in self.results if t0 <= r[0] and r[1] <= t1]

    def _run(self) -> None:
        client = httpx.Client(timeout=30)
        i, start = 0, time.perf_counter()
        while not self._stop.is_set():
            with self._lock:
                body, rate = self.bodies[i % len(self.bodies)], self.rate
            due = start + i / rate
            if due - time.perf_counter() > 1.0:  # the rate changed: start a new schedule
                i, start = 0, time.perf_counter()
                continue
            self._stop.wait(max(0.0, due - time.perf_counter()))
            t0 = time.perf_counter()
            try:
                ok = client.post(self.url, content=body).status_code == 200
            except httpx.HTTPError:
                ok = False
            with self._lock:
                self.results.append((t0, time.perf_counter(), ok))
            i += 1
        client.close()


def _body(row: list[float]) -> bytes:
    doc = {"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": row}]}
    return json.dumps(doc).encode()


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.config_dir = root / "config"
        self.generation = 0
        self.number = 0
        self.serving_state = disagreeing.serving(args.hidden, args.layers)
        self.files = {
            "serving": self._save("serving", self.serving_state),
            "disagreeing": self._save("disagreeing", disagreeing.disagreeing(self.serving_state)),
        }
        self.runtime = Runtime(self._env(), free_port(), root / "runtime.log")
        self.http = httpx.Client(base_url=self.runtime.url, timeout=10)

    def _save(self, name: str, state: dict[str, torch.Tensor]) -> tuple[str, str]:
        path = self.root / f"{name}.safetensors"
        return path.as_uri(), checkpoints.save(state, path)

    def _env(self) -> dict[str, str]:
        return {
            "HOTSWAP_MODEL_NAME": MODEL,
            "HOTSWAP_CONFIG_DIR": str(self.config_dir),
            "HOTSWAP_CACHE_DIR": str(self.root / "cache"),
            "HOTSWAP_FILE_ROOTS": str(self.root),
            "HOTSWAP_DEVICE": "cpu",
            "HOTSWAP_RESYNC_SECONDS": "300",
            "HOTSWAP_TORCH_THREADS": "1",
            "HOTSWAP_LOG_LEVEL": "warning",
        }

    # ---- model.json ---------------------------------------------------------------

    def publish(self, which: str, number: int | None = None, shadow: bool = True) -> int:
        """A revision of ``which`` weights (a new number unless given) as the stable one."""
        if number is None:
            self.number += 1
            number = self.number
        uri, sha = self.files[which]
        stable = checkpoints.revision(
            number,
            uri,
            sha,
            disagreeing.ARCHITECTURE,
            (disagreeing.FEATURES,),
            disagreeing.args(self.args.hidden, self.args.layers),
        )
        self.generation += 1
        doc: dict[str, Any] = {"name": MODEL, "generation": self.generation, "stable": stable}
        if shadow:
            spec = {"maxDisagreement": self.args.max_disagreement, "timeoutSeconds": 600}
            doc["analysis"] = {"shadow": spec}
        checkpoints.publish(self.config_dir, json.dumps(doc))
        return number

    def metadata(self) -> dict[str, Any]:
        body: dict[str, Any] = self.http.get(f"/v2/models/{MODEL}").json()
        return body

    def serving(self) -> str | None:
        return self.metadata().get("model_version")

    def decision(self, number: int) -> dict[str, Any] | None:
        shadow = self.metadata().get("analysis", {}).get("shadow")
        if shadow and shadow["revision"] == number and shadow["decision"] in DECIDED:
            return dict(shadow)
        return None

    def judged(self, which: str) -> dict[str, Any]:
        """Publish a new revision of ``which`` and wait for its shadow decision."""
        number = self.publish(which)
        figures: dict[str, Any] = poll(
            lambda: self.decision(number), 900, f"revision {number}", 0.1
        )
        return figures

    def back_to_serving_weights(self) -> None:
        """After a revision with the disagreeing weights passed: revision 1 again (an
        older number: a rollback is not compared)."""
        self.publish("serving", number=1)
        poll(lambda: self.serving() == "1", 120, "revision 1 serving again", 0.05)


def inputs(bench: Bench, share: float, count: int = 1000) -> torch.Tensor:
    a = bench.args
    return disagreeing.inputs(bench.serving_state, count, share, a.hidden, a.layers)


def detection(bench: Bench, traffic: Traffic, shares: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for share in shares:
        traffic.set(inputs(bench, float(share)), bench.args.rate)
        runs = []
        for _ in range(bench.args.runs):
            figures = bench.judged("disagreeing")
            runs.append(figures)
            if figures["decision"] != "Failed":
                bench.back_to_serving_weights()
        refused = [r for r in runs if r["decision"] == "Failed"]
        out[share] = {
            "runs": len(runs),
            "refused": len(refused),
            "detect_s": round(median([r["seconds"] for r in refused]), 2) if refused else None,
            "detect_s_max": round(max(r["seconds"] for r in refused), 2) if refused else None,
            "samples": round(median([r["samples"] for r in refused])) if refused else None,
            "skipped": sum(r.get("skipped", 0) for r in runs),
        }
        print(json.dumps({"share": share, **out[share]}), flush=True)
    return out


def false_refusals(bench: Bench, traffic: Traffic) -> dict[str, Any]:
    traffic.set(inputs(bench, 0.0), bench.args.false_refusal_rate)
    runs = [bench.judged("serving") for _ in range(bench.args.false_refusal_runs)]
    refused = sum(r["decision"] == "Failed" for r in runs)
    return {
        "runs": len(runs),
        "refused": refused,
        "rate": refused / len(runs) if runs else None,
        "samples_median": median([r["samples"] for r in runs]),
        "seconds_median": round(median([r["seconds"] for r in runs]), 2),
        "skipped": sum(r.get("skipped", 0) for r in runs),
        "requests_per_s": bench.args.false_refusal_rate,
    }


def p99_pairs(bench: Bench, traffic: Traffic) -> dict[str, Any]:
    traffic.set(inputs(bench, 0.0), bench.args.rate)
    ratios, offs, ons = [], [], []
    for _ in range(bench.args.p99_pairs):
        figures = bench.judged("serving")  # a comparison runs: shadow on
        t1 = time.perf_counter()
        t0 = t1 - figures["seconds"]  # the comparison alone, not the load before it
        on = [1000 * (e - s) for s, e, ok in traffic.between(t0, t1) if ok]
        time.sleep(t1 - t0)  # the same time with no comparison: shadow off
        off = [1000 * (e - s) for s, e, ok in traffic.between(t1, time.perf_counter()) if ok]
        ratios.append(percentile(on, 99) / percentile(off, 99))
        offs.append(percentile(off, 99))
        ons.append(percentile(on, 99))
        assert figures["decision"] == "Passed", figures
    return {
        "pairs": len(ratios),
        "off_p99_ms": [round(v, 2) for v in offs],
        "on_p99_ms": [round(v, 2) for v in ons],
        "ratio_per_pair": [round(r, 3) for r in ratios],
        "ratio": round(median(ratios), 3),
        "requests_per_s": bench.args.rate,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="hotswap-analysis-"))
    bench = Bench(args, root)
    traffic = Traffic(f"{bench.runtime.url}/v2/models/{MODEL}/infer")
    try:
        bench.publish("serving", shadow=False)
        bench.runtime.start()
        poll(lambda: bench.serving() == "1", 120, "revision 1", 0.05)
        traffic.set(inputs(bench, 0.0), args.rate)
        traffic.start()
        shares = args.shares.split(",")
        found = detection(bench, traffic, shares)
        false = false_refusals(bench, traffic)
        p99 = p99_pairs(bench, traffic)
        failed = sum(not ok for _, _, ok in traffic.results)
    finally:
        traffic.stop()
        bench.runtime.stop()
    summary = {
        "model": {
            "architecture": disagreeing.ARCHITECTURE,
            **disagreeing.args(args.hidden, args.layers),
        },
        "max_disagreement": args.max_disagreement,
        "rate": args.rate,
        "detection": found,
        "false_refusal": false,
        "shadow_p99": p99,
        "failed_requests": failed,
        "detect_s": {share: found[share]["detect_s"] for share in shares},
        "false_refusal_runs": false["runs"],
        "false_refusal_rate": false["rate"],
        "shadow_p99_ratio": p99["ratio"],
    }
    print(json.dumps(summary), flush=True)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
