"""Shadow comparison: live requests scored with new weights before they serve.

The inference workers hand the ``ShadowTap`` each batch they answered with the serving
model, after every answer in it went back to its client: the tap keeps a sampled copy of
the input and the serving output, within a byte budget and a queue bound, and drops
(and counts) what does not fit. The swap worker (``compare``) takes the samples, runs
the new weights on each input only while no request waits for the CPU (the serving
engine is idle), compares the two outputs row by row (``metric``) and feeds a
sequential test (``sequential.py``). No answer computed here ever leaves the pod.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hotswap_contract.wire import Shadow, ShadowDecision, ShadowFigures, ShadowMetric
from hotswap_runtime.errors import ShadowRefused
from hotswap_runtime.swap.sequential import SequentialTest, Verdict

MAX_QUEUED = 64  # samples waiting to be scored
MAX_QUEUED_BYTES = 64 << 20  # their inputs and outputs together
MAX_SAMPLE_AGE = 5.0  # seconds: an older sample is skipped, not scored
IDLE_WAIT = 0.05  # seconds between looks at whether serving is idle


@dataclass(frozen=True)
class Sample:
    """One answered batch: its input, the serving model's output and when it was seen."""

    version: str
    x: torch.Tensor
    y: torch.Tensor
    seen: float

    @property
    def nbytes(self) -> int:
        return self.x.nbytes + self.y.nbytes


class ShadowTap:
    """Sampled copies of answered batches, for one comparison at a time."""

    def __init__(self, max_queued: int = MAX_QUEUED, max_bytes: int = MAX_QUEUED_BYTES) -> None:
        self.max_queued = max_queued
        self.max_bytes = max_bytes
        self._lock = threading.Condition()
        self._queue: collections.deque[Sample] = collections.deque()
        self._bytes = 0
        self._version: str | None = None  # the serving version being compared against
        self._rate = 0.0
        self.dropped = 0  # sampled batches not kept (queue or bytes full)

    def arm(self, version: str, rate: float) -> None:
        with self._lock:
            self._clear()
            self._version, self._rate, self.dropped = version, rate, 0

    def disarm(self) -> None:
        with self._lock:
            self._clear()
            self._version, self._rate = None, 0.0

    def offer(self, version: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """Called by an inference worker after it answered a batch; cheap when unarmed."""
        if self._version != version or random.random() >= self._rate:
            return
        nbytes = x.nbytes + y.nbytes
        with self._lock:
            if self._version != version:
                return
            if len(self._queue) >= self.max_queued or self._bytes + nbytes > self.max_bytes:
                self.dropped += int(x.shape[0]) if x.ndim else 1
                return
            # x may view a request body whose memory is handed on: keep a copy
            sample = Sample(version, x.detach().clone(), y, time.monotonic())
            self._queue.append(sample)
            self._bytes += nbytes
            self._lock.notify()

    def take(self, timeout: float) -> Sample | None:
        with self._lock:
            if not self._queue:
                self._lock.wait(timeout)
            if not self._queue:
                return None
            sample = self._queue.popleft()
            self._bytes -= sample.nbytes
            return sample

    def _clear(self) -> None:
        self._queue.clear()
        self._bytes = 0


def disagreements(
    serving: torch.Tensor, candidate: torch.Tensor, metric: ShadowMetric, tolerance: float
) -> torch.Tensor:
    """Per row of a batch: whether the two outputs disagree by ``metric``. A row where
    the new weights answer NaN or infinity always disagrees (NaN compares false)."""
    a = serving.float().reshape(serving.shape[0], -1)
    b = candidate.float().reshape(candidate.shape[0], -1)
    broken = ~torch.isfinite(b).all(dim=1)
    if metric == "top1":
        return broken | (a.argmax(dim=1) != b.argmax(dim=1))
    if metric == "maxAbsDiff":
        return broken | ((a - b).abs().amax(dim=1) > tolerance)
    tv = 0.5 * (a.softmax(dim=1) - b.softmax(dim=1)).abs().sum(dim=1)
    return broken | (tv > tolerance)


@dataclass
class Comparison:
    """One shadow comparison of ``revision`` against the serving version."""

    revision: int
    spec: Shadow
    test: SequentialTest
    started: float
    skipped: int = 0
    max_abs_diff: float = 0.0
    decision: ShadowDecision = "Running"

    @classmethod
    def start(cls, revision: int, spec: Shadow) -> Comparison:
        test = SequentialTest(spec.max_disagreement, spec.max_samples)
        return cls(revision, spec, test, time.monotonic())

    def score(self, serving: torch.Tensor, candidate: torch.Tensor) -> Verdict:
        """Add one answered batch: every row disagrees when the shapes differ."""
        if candidate.shape != serving.shape or serving.ndim == 0:
            rows = int(serving.shape[0]) if serving.ndim else 1
            return self.test.add(rows, rows)
        found = disagreements(serving, candidate, self.spec.metric, self.spec.tolerance)
        diff = (serving.float() - candidate.float()).abs().nan_to_num(nan=float("inf"))
        if diff.numel():
            self.max_abs_diff = max(self.max_abs_diff, float(diff.max()))
        return self.test.add(int(found.sum()), int(found.numel()))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def figures(self, dropped: int = 0) -> ShadowFigures:
        return ShadowFigures(
            revision=self.revision,
            metric=self.spec.metric,
            decision=self.decision,
            samples=self.test.samples,
            disagreements=self.test.disagreements,
            skipped=self.skipped + dropped,
            maxAbsDiff=round(self.max_abs_diff, 6) if self.test.samples else None,
            seconds=round(self.elapsed(), 3),
        )


def skipped_figures(revision: int, spec: Shadow) -> ShadowFigures:
    return ShadowFigures(revision=revision, metric=spec.metric, decision="Skipped")


Forward = Callable[[torch.Tensor], torch.Tensor]
REPORT_EVERY = 10.0  # seconds between progress reports (API writes) while a comparison runs


@dataclass(frozen=True)
class Hooks:
    """What a comparison needs from the swapper and the engine."""

    candidate: Forward  # the new weights on an input batch, off the serving path
    idle: Callable[[], bool]  # whether no request waits for or holds the CPU now
    stop: Callable[[], None]  # raises Superseded once a newer revision is wanted
    report: Callable[[ShadowFigures], None]  # progress and the outcome


def compare(comparison: Comparison, tap: ShadowTap, serving: int, hooks: Hooks) -> None:
    """Score samples until the test decides: return to activate, or raise ShadowRefused.

    Past ``timeoutSeconds`` without a decision, ``onTimeout: Activate`` returns and
    ``Wait`` goes on scoring with the decision ``Waiting``."""
    spec = comparison.spec
    tap.arm(str(serving), spec.sample_rate)
    last = time.monotonic()
    try:
        while True:
            hooks.stop()
            verdict = _score_next(comparison, tap, hooks)
            if verdict is not Verdict.CONTINUE or _timed_out(comparison):
                break
            if time.monotonic() - last >= REPORT_EVERY:
                hooks.report(comparison.figures(tap.dropped))
                last = time.monotonic()
    finally:
        tap.disarm()
    comparison.decision = _decision(verdict, comparison)
    hooks.report(comparison.figures(tap.dropped))
    if comparison.decision == "Failed":
        raise ShadowRefused(_refusal(comparison, serving))


def _score_next(comparison: Comparison, tap: ShadowTap, hooks: Hooks) -> Verdict:
    sample = tap.take(timeout=0.1)
    if sample is None:
        return Verdict.CONTINUE
    if not _wait_idle(hooks.idle, sample.seen):
        comparison.skipped += int(sample.x.shape[0]) if sample.x.ndim else 1
        return Verdict.CONTINUE
    return comparison.score(sample.y, hooks.candidate(sample.x))


def _wait_idle(idle: Callable[[], bool], seen: float) -> bool:
    """Wait for serving to be idle; False once the sample is too old to score."""
    while not idle():
        if time.monotonic() - seen > MAX_SAMPLE_AGE:
            return False
        time.sleep(IDLE_WAIT)
    return True


def _timed_out(comparison: Comparison) -> bool:
    spec = comparison.spec
    if comparison.elapsed() < spec.timeout_seconds:
        return False
    if spec.on_timeout == "Activate":
        return True
    comparison.decision = "Waiting"
    return False


def _decision(verdict: Verdict, comparison: Comparison) -> ShadowDecision:
    if verdict is Verdict.REFUSE:
        return "Failed"
    return "Passed" if verdict is Verdict.PASS else "Activated"


def _refusal(comparison: Comparison, serving: int) -> str:
    test, spec = comparison.test, comparison.spec
    return (
        f"revision {comparison.revision}: shadow comparison refused it: {test.disagreements} "
        f"of {test.samples} sampled live requests ({100 * test.disagreements / test.samples:.1f}%)"
        f" disagree with serving revision {serving} by {spec.metric} (max |diff| "
        f"{comparison.max_abs_diff:.3g}); spec.analysis.shadow.maxDisagreement is "
        f"{100 * spec.max_disagreement:g}%"
    )
