"""Prometheus metrics of one runtime, in their own registry (several apps per process)."""

from __future__ import annotations

import contextlib
import threading

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from hotswap_contract.wire import PodState
from hotswap_runtime.control.desired import Failure, Status, SwapRecord
from hotswap_runtime.devices import gpu_memory

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
KEEP_REVISIONS = 4  # request series kept for revisions no longer serving
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
REQUEST_PHASES = ("decode", "queue", "forward", "encode")
SWAP_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Swaps by result, phase durations, serving revision, requests and GPU memory."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.registry = CollectorRegistry()
        r = self.registry
        self.swaps = Counter(
            "hotswap_swaps", "Swap attempts by result and reason", ["result", "reason"], registry=r
        )
        self.swap_phase = Histogram(
            "hotswap_swap_phase_seconds",
            "Seconds per swap phase",
            ["phase"],
            buckets=SWAP_BUCKETS,
            registry=r,
        )
        self.revision = Gauge("hotswap_model_revision", "Revision serving now", registry=r)
        self.state = Gauge(
            "hotswap_pod_state",
            "1 for where the pod stands with its target revision: Pending, Loading, "
            "Serving or Failed (0 for the others)",
            ["state"],
            registry=r,
        )
        for state in PodState:
            self.state.labels(state.value).set(0)
        self.model_info = Gauge(
            "hotswap_model_info",
            "1 for the revision and sha256 serving now",
            ["revision", "sha256"],
            registry=r,
        )
        self.config_errors = Counter(
            "hotswap_config_errors", "model.json documents rejected", registry=r
        )
        self.last_failure = Gauge(
            "hotswap_last_failure_info",
            "1 for the last failure: revision and reason code",
            ["revision", "reason"],
            registry=r,
        )
        self.requests = Counter(
            "hotswap_requests",
            "Inference requests by revision and HTTP code",
            ["revision", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "hotswap_request_seconds",
            "Inference latency by revision",
            ["revision"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_phase = Histogram(
            "hotswap_request_phase_seconds",
            "Seconds per request phase: decode, queue (worker, batch, lease), forward, encode",
            ["phase"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._phase_children = {p: self.request_phase.labels(p) for p in REQUEST_PHASES}
        self.batch_size = Histogram(
            "hotswap_batch_size",
            "Samples per forward pass (dynamic batching joins requests)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.gpu = Gauge("hotswap_gpu_memory_bytes", "CUDA memory", ["kind"], registry=r)
        self._info_labels: tuple[str, str] | None = None
        self._request_labels: dict[str, set[str]] = {}  # revision -> codes seen
        self._lock = threading.Lock()

    # Observer ---------------------------------------------------------------------

    def swap_finished(self, record: SwapRecord) -> None:
        reason = record.failure.code if record.failure else record.result
        self.swaps.labels(record.result, reason).inc()
        for phase, seconds in record.phases.items():
            self.swap_phase.labels(phase).observe(seconds)
        if record.failure is not None:
            self._set_failure(record.failure)

    def config_rejected(self, failure: Failure) -> None:
        self.config_errors.inc()
        self._set_failure(failure)

    def status_changed(self, status: Status) -> None:
        for state in PodState:
            self.state.labels(state.value).set(float(state is status.state))
        serving = status.serving
        if serving is None:
            return
        labels = (str(serving.revision.revision), serving.revision.checkpoint.sha256)
        if labels != self._info_labels:
            if self._info_labels is not None:
                self.model_info.remove(*self._info_labels)
            self.model_info.labels(*labels).set(1)
            self._info_labels = labels
        self.revision.set(serving.revision.revision)
        self._forget_old_revisions(labels[0])

    def _set_failure(self, failure: Failure) -> None:
        self.last_failure.clear()
        self.last_failure.labels(str(failure.revision or ""), failure.code).set(1)

    # Requests ---------------------------------------------------------------------

    def _forget_old_revisions(self, serving: str) -> None:
        """Keep request series of the last few revisions only: a pod that swaps for
        months must not grow a series per revision forever."""
        with self._lock:
            old = [r for r in self._request_labels if r not in (serving, "none")]
            dropped = {r: self._request_labels.pop(r) for r in old[:-KEEP_REVISIONS]}
        for revision, codes in dropped.items():
            for code in codes:
                with contextlib.suppress(KeyError):
                    self.requests.remove(revision, code)
            with contextlib.suppress(KeyError):
                self.latency.remove(revision)

    def request(self, revision: str, code: int, seconds: float) -> None:
        with self._lock:
            self._request_labels.setdefault(revision, set()).add(str(code))
        self.requests.labels(revision, str(code)).inc()
        if code < 400:
            self.latency.labels(revision).observe(seconds)

    def phases(self, **seconds: float) -> None:
        for phase, value in seconds.items():
            self._phase_children[phase].observe(value)

    def batch(self, samples: int) -> None:
        self.batch_size.observe(samples)

    def render(self) -> bytes:
        for kind, value in gpu_memory(self.device).items():
            self.gpu.labels(kind).set(value)
        return generate_latest(self.registry)
