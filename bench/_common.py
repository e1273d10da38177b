"""Helpers shared by benchmarks: a runtime process, an HTTP load generator, statistics,
and the interleaved steady/swap windows that bench/swap.py runs on hotswap and its peer."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devcluster.procs import source_path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: list[float]) -> float:
    return percentile(values, 50)


def poll(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = condition()
        except (httpx.HTTPError, OSError):
            result = None
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A memory field of ``/proc/<pid>/status`` in MiB: ``VmRSS``, or ``VmHWM`` (peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def terminate(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM ``process`` if it still runs; SIGKILL it if it has not exited 30 s later."""
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@dataclass
class Runtime:
    """``python -m hotswap_runtime`` as a real process."""

    env: dict[str, str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    grpc_port: int = field(default_factory=free_port)
    source: Path | None = None  # another checkout's sources to run (bench baselines)
    _client: httpx.Client | None = None  # one connection for metadata polls

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> None:
        path = source_path()
        if self.source is not None:
            tree = self.source
            path = os.pathsep.join(str(tree / part) for part in ("runtime", "contract", "."))
        env = {
            **os.environ,
            "PYTHONPATH": path,
            "HOTSWAP_HOST": "127.0.0.1",
            "HOTSWAP_PORT": str(self.port),
            "HOTSWAP_GRPC_PORT": str(self.grpc_port),
            **self.env,
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hotswap_runtime"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        if wait_ready:
            poll(self._ready, 120, "the runtime to be ready", 0.05)

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"runtime exited; see {self.log_path}")
        return httpx.get(self.url + "/v2/health/ready", timeout=5).status_code == 200

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        terminate(self.process)

    def metadata(self, model: str) -> dict[str, Any]:
        """Model metadata over one kept-alive connection: a fresh ``httpx.get`` per poll
        builds a client (and its TLS context) each time, load the swap windows would
        carry and the steady window would not."""
        if self._client is None:
            self._client = httpx.Client(base_url=self.url, timeout=10)
        body: dict[str, Any] = self._client.get(f"/v2/models/{model}").json()
        return body


@dataclass
class Sample:
    start: float
    end: float
    ok: bool
    version: str | None


@dataclass
class LoadGenerator:
    """Closed-loop clients, each sending the same infer body as fast as answers come."""

    url: str
    body: bytes
    clients: int
    retry_delay: float = 0.01
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for _ in range(self.clients):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def since(self, t0: float, t1: float | None = None) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if s.start >= t0 and (t1 is None or s.end <= t1)]

    def _run(self) -> None:
        headers = {"content-type": "application/json"}
        client = httpx.Client(timeout=30)
        while not self._stop.is_set():
            start = time.perf_counter()
            version = None
            try:
                response = client.post(self.url, content=self.body, headers=headers)
                ok = response.status_code == 200
                if ok:
                    version = json.loads(response.content)["model_version"]
            except httpx.HTTPError:
                ok = False
            end = time.perf_counter()
            with self._lock:
                self.samples.append(Sample(start, end, ok, version))
            if not ok:
                self._stop.wait(self.retry_delay)  # a client's retry pause after an error
        client.close()


# ---- interleaved steady and swap windows ---------------------------------------------

# One swap (or a peer's update) as the windows see it: perf_counter ``start`` and
# ``end``, from the call until every replica answered with the new weights.
Swap = dict[str, Any]
# A steady window's requests and the requests of the swap window that follows it.
Window = tuple[list[Sample], list[Sample]]


def overlapping(samples: list[Sample], swaps: list[Swap]) -> list[Sample]:
    """The samples that were in flight while some swap was."""
    return [s for s in samples if any(s.start < w["end"] and s.end > w["start"] for w in swaps)]


def steady_window(load: LoadGenerator, need: int) -> list[Sample]:
    """At least ``need`` requests that all ran without a swap."""
    t0 = time.perf_counter()
    poll(lambda: len(load.since(t0)) >= need, 600, f"{need} steady requests", 0.05)
    return load.since(t0, time.perf_counter())


def swap_window(
    load: LoadGenerator, need: int, swap: Callable[[], Swap], gap: float
) -> tuple[list[Sample], list[Swap]]:
    """Swaps back to back (``gap`` seconds apart) until at least ``need`` requests
    overlapped one, and at least two swaps ran; those requests and the swaps."""
    t0 = time.perf_counter()
    swaps: list[Swap] = []
    during: list[Sample] = []
    while len(during) < need or len(swaps) < 2:
        swaps.append(swap())
        time.sleep(gap)
        during = overlapping(load.since(t0, time.perf_counter()), swaps)
    return during, swaps


def interleaved_windows(
    load: LoadGenerator, swap: Callable[[], Swap], repeats: int, need: int, gap: float
) -> tuple[list[Window], list[Swap]]:
    """``repeats`` pairs of a steady window then a swap window, and every swap."""
    windows: list[Window] = []
    swaps: list[Swap] = []
    for _ in range(repeats):
        steady = steady_window(load, need)
        during, done = swap_window(load, need, swap, gap)
        windows.append((steady, during))
        swaps += done
    return windows, swaps


def latencies_ms(samples: list[Sample], ok_only: bool = True) -> list[float]:
    return [1000 * (s.end - s.start) for s in samples if s.ok or not ok_only]


def window_figures(windows: list[Window]) -> dict[str, Any]:
    """Latency figures of interleaved windows. ``p99_ratio`` is the median over the pairs
    of (swap window p99 / steady window p99), ``p99_ratio_spread`` their min and max;
    p99s count answered requests only (failures are counted apart), p50 all of them."""
    ratios = sorted(
        percentile(latencies_ms(during), 99) / percentile(latencies_ms(steady), 99)
        for steady, during in windows
    )
    steady_all = [s for steady, _ in windows for s in steady]
    during_all = [s for _, during in windows for s in during]
    return {
        "repeats": len(windows),
        "steady_requests_per_window": [len(steady) for steady, _ in windows],
        "swap_requests_per_window": [len(during) for _, during in windows],
        "steady_p50_ms": round(percentile(latencies_ms(steady_all, ok_only=False), 50), 2),
        "steady_p99_ms": round(percentile(latencies_ms(steady_all), 99), 2),
        "swap_p99_ms": round(percentile(latencies_ms(during_all), 99), 2),
        "p99_ratio": round(median(ratios), 3),
        "p99_ratio_per_repeat": [round(r, 3) for r in ratios],
        "p99_ratio_spread": [round(ratios[0], 3), round(ratios[-1], 3)],
    }
