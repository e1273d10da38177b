"""Benchmark: the runtime's host memory under a long load, against its stated bound.

``python -m hotswap_runtime`` at its defaults serves bench/serving.py's model (resnet18,
3x64x64, CPU, one torch thread) to 32 closed-loop clients sending batches of 8, the
protocols in turn (REST JSON, REST binary, gRPC; ``--chunk`` seconds each) for
``--seconds`` (600). Every ``--every`` seconds the process's RSS is read; at the end its
peak (VmHWM).

The bound (docs/architecture.md, "Serving interface"): RSS <= RSS when ready +
HOTSWAP_FORWARD_MEMORY_BYTES (activations) + HOTSWAP_REQUEST_MEMORY_BYTES (bodies and
decoded tensors) + 8 x HOTSWAP_MMAP_THRESHOLD_BYTES (free heap kept for reuse), all at
their defaults. Also reported: the growth from the end of the first minute to the end,
which a leak or fragmentation creep would show.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import rss_mb
from bench.serving import MODEL, Hotswap, Load, grpc_message, rest_binary, rest_json, write_model
from hotswap_runtime.settings import Settings

MIB = 1 << 20
BATCH, CLIENTS = 8, 32


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    root = Path(tempfile.mkdtemp(prefix="hotswap-soak-"))
    try:
        result = soak(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result) + "\n")
    print(json.dumps(result))
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=600.0, help="load duration")
    p.add_argument("--chunk", type=float, default=20.0, help="seconds per protocol turn")
    p.add_argument("--every", type=float, default=10.0, help="seconds between RSS reads")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", help="also write the JSON object here")
    return p.parse_args(argv)


def soak(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    write_model(root)
    server = Hotswap(root, args.threads)
    server.start()
    try:
        pid = server.pid()
        assert pid is not None
        _run(server, 5.0, args.every, pid, [])  # warm: every protocol once
        ready = rss_mb(pid)
        readings: list[tuple[float, float]] = []
        t0 = time.perf_counter()
        answered = 0
        while time.perf_counter() - t0 < args.seconds:
            answered += _run(server, args.chunk, args.every, pid, readings, t0)
        peak = rss_mb(pid, "VmHWM")
    finally:
        server.stop()
    return _result(args, ready, readings, peak, answered)


def _run(
    server: Hotswap,
    seconds: float,
    every: float,
    pid: int,
    readings: list[tuple[float, float]],
    t0: float = 0.0,
) -> int:
    """Each protocol for ``seconds``; RSS read every ``every`` seconds meanwhile."""
    answered = 0
    for protocol in ("json", "binary", "grpc"):
        load = _load(server, protocol)
        load.start()
        end = time.perf_counter() + seconds
        while (now := time.perf_counter()) < end:
            time.sleep(min(every, end - now))
            readings.append((round(time.perf_counter() - t0, 1), round(rss_mb(pid), 1)))
        answered += load.finish()
    return answered


def _load(server: Hotswap, protocol: str) -> Load:
    if protocol == "grpc":
        return Load(protocol, server.grpc, "", grpc_message(BATCH, MODEL), {}, CLIENTS)
    body, headers = rest_json(BATCH) if protocol == "json" else rest_binary(BATCH)
    return Load(protocol, server.rest, f"/v2/models/{MODEL}/infer", body, headers, CLIENTS)


def _result(
    args: argparse.Namespace,
    ready: float,
    readings: list[tuple[float, float]],
    peak: float,
    answered: int,
) -> dict[str, Any]:
    d = Settings(model_name=MODEL)
    slack = d.forward_memory_bytes + d.request_memory_bytes + 8 * d.mmap_threshold_bytes
    bound = ready + slack / MIB
    after_first_minute = [rss for t, rss in readings if t >= 60] or [r for _, r in readings]
    last = readings[-1][1]
    return {
        "load": f"{CLIENTS} clients, batch {BATCH}, json/binary/grpc in turn, "
        f"{args.seconds:g} s, {MODEL} 3x64x64 cpu, {args.threads} torch thread(s)",
        "requests_ok": answered,
        "rss_mb_ready": round(ready, 1),
        "rss_mb_end": last,
        "rss_mb_max_read": max(r for _, r in readings),
        "rss_mb_peak_hwm": round(peak, 1),
        "growth_mb_after_first_minute": round(last - after_first_minute[0], 1),
        "bound_mb": round(bound, 1),
        "within_bound": peak <= bound,
        "readings": readings,
    }


if __name__ == "__main__":
    sys.exit(main())
