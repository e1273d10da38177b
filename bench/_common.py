"""Helpers shared by benchmarks: a runtime process, an HTTP load generator, statistics."""

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


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
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
    _client: httpx.Client | None = None  # one connection for metadata polls

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> None:
        path = os.pathsep.join(
            p for p in (str(REPO / "runtime"), str(REPO), os.environ.get("PYTHONPATH")) if p
        )
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
