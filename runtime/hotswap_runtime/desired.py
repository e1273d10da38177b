"""The one idempotent desired-revision path, and the worker that swaps toward it.

The file watcher and the API watcher both call ``offer(revision, generation)``. Offers
are keyed by (revision, sha256): an older ``generation`` than one already seen is
stale and ignored, the same key again is a no-op, and a different key replaces the
desired revision and wakes the worker. The worker swaps toward the desired revision; a
newer offer arriving mid-load makes the load stop at its next phase boundary (or next
downloaded chunk). A revision already serving is a no-op, and a revision that failed
for a permanent reason is not retried; transient fetch failures are retried after a
back-off when the revision is offered again (the periodic resync does that).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from .contract import PodState, Revision, short_sha
from .devices import release_host_memory
from .errors import Superseded, SwapError
from .swapper import LoadedModel, PhaseClock, Swapper, utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """Why the last attempt failed; ``revision`` is None for a malformed model.json."""

    revision: int | None
    sha256: str | None
    code: str
    reason: str
    at: str = field(default_factory=utc_now)
    transient: bool = False
    monotonic: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class SwapRecord:
    """One finished swap attempt."""

    revision: Revision
    result: str  # ok | failed | superseded
    phases: dict[str, float]
    kind: str = ""
    failure: Failure | None = None


@dataclass(frozen=True)
class Status:
    """A snapshot for model metadata and the pod report."""

    state: PodState
    serving: LoadedModel | None
    target: Revision | None
    last_failure: Failure | None
    last_swap: SwapRecord | None
    config_generation: int | None


class Observer(Protocol):
    def swap_finished(self, record: SwapRecord) -> None: ...
    def config_rejected(self, failure: Failure) -> None: ...
    def status_changed(self, status: Status) -> None: ...


class Reconciler:
    """Holds the desired revision and runs swaps toward it on one worker thread."""

    def __init__(
        self, swapper: Swapper, observers: list[Observer], retry_seconds: float = 30.0
    ) -> None:
        self.swapper = swapper
        self.observers = observers
        self.retry_seconds = retry_seconds
        self._cond = threading.Condition()
        self._desired: Revision | None = None
        self._generation: int | None = None
        self._loading: Revision | None = None
        self._failures: dict[tuple[int, str], Failure] = {}
        self._last_failure: Failure | None = None
        self._last_swap: SwapRecord | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="hotswap-swapper", daemon=True)

    # ---- inputs -------------------------------------------------------------------

    def offer(self, revision: Revision, generation: int, source: str) -> None:
        """A watcher saw ``revision`` meant for this pod in config ``generation``."""
        with self._cond:
            if self._generation is not None and generation < self._generation:
                log.debug("ignoring stale generation %d from %s", generation, source)
                return
            changed = self._generation != generation
            self._generation = generation
            if self._desired is not None and self._desired.key == revision.key:
                if changed:
                    self._cond.notify_all()
                return
            log.info(
                "desired revision %d sha256=%s (generation %d, from %s)",
                revision.revision,
                short_sha(revision.checkpoint.sha256),
                generation,
                source,
            )
            self._desired = revision
            self._cond.notify_all()
        self._notify_status()

    def config_error(self, reason: str, source: str) -> None:
        """model.json could not be read; keep serving and say why."""
        failure = Failure(None, None, "config_error", f"{source}: {reason}")
        with self._cond:
            self._last_failure = failure
        log.error("model.json rejected (%s): %s", source, reason)
        for observer in self.observers:
            observer.config_rejected(failure)
        self._notify_status()

    # ---- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def status(self) -> Status:
        with self._cond:
            return Status(
                state=self._state(),
                serving=self.swapper.current(),
                target=self._desired,
                last_failure=self._last_failure,
                last_swap=self._last_swap,
                config_generation=self._generation,
            )

    def wanted(self, key: tuple[int, str]) -> bool:
        with self._cond:
            return self._desired is not None and self._desired.key == key

    # ---- worker -------------------------------------------------------------------

    def _state(self) -> PodState:
        serving = self.swapper.current()
        desired = self._desired
        if self._loading is not None:
            return PodState.LOADING
        if desired is not None and serving is not None and serving.key == desired.key:
            return PodState.SERVING
        if desired is not None and desired.key in self._failures:
            return PodState.FAILED
        if desired is None and serving is not None:
            return PodState.SERVING
        return PodState.PENDING if serving is None else PodState.LOADING

    def _next(self) -> Revision | None:
        desired = self._desired
        if desired is None:
            return None
        serving = self.swapper.current()
        if serving is not None and serving.key == desired.key:
            return None
        failure = self._failures.get(desired.key)
        if failure is None:
            return desired
        due = failure.transient and time.monotonic() - failure.monotonic >= self.retry_seconds
        return desired if due else None

    def _run(self) -> None:
        with contextlib.suppress(OSError):  # loading yields the CPU to serving threads
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or self._next() is not None, 1.0)
                if self._stopping:
                    return
                revision = self._next()
                if revision is None:
                    continue
                self._loading = revision
            self._notify_status()
            record = self._attempt(revision)
            release_host_memory()
            with self._cond:
                self._loading = None
                self._last_swap = record
                if record.failure is not None:
                    self._failures[revision.key] = record.failure
                    self._last_failure = record.failure
            for observer in self.observers:
                observer.swap_finished(record)
            self._notify_status()

    def _attempt(self, revision: Revision) -> SwapRecord:
        clock = PhaseClock()
        key = revision.key
        try:
            self.swapper.swap_to(revision, lambda: not self.wanted(key), clock)
        except Superseded as exc:
            _log_swap(revision, "superseded", clock, str(exc))
            return SwapRecord(revision, "superseded", clock.phases, self.swapper.last_kind)
        except SwapError as exc:
            failure = _failure(revision, exc.code, str(exc), exc.transient)
        except Exception as exc:  # a bug or an odd model: never let it stop serving
            log.exception("swap to revision %d crashed", revision.revision)
            failure = _failure(revision, "internal_error", f"{type(exc).__name__}: {exc}", False)
        else:
            _log_swap(revision, "ok", clock, self.swapper.last_kind)
            return SwapRecord(revision, "ok", clock.phases, self.swapper.last_kind)
        _log_swap(revision, "failed", clock, failure.reason)
        return SwapRecord(revision, "failed", clock.phases, self.swapper.last_kind, failure)

    def _notify_status(self) -> None:
        status = self.status()
        for observer in self.observers:
            observer.status_changed(status)


def _failure(revision: Revision, code: str, reason: str, transient: bool) -> Failure:
    return Failure(revision.revision, revision.checkpoint.sha256, code, reason, transient=transient)


def _log_swap(revision: Revision, result: str, clock: PhaseClock, detail: str) -> None:
    phases = " ".join(f"{k}={v:.3f}s" for k, v in clock.phases.items())
    total = sum(clock.phases.values())
    level = logging.WARNING if result == "failed" else logging.INFO
    log.log(
        level,
        "swap %s revision=%d sha256=%s %s total=%.3fs (%s)",
        result,
        revision.revision,
        short_sha(revision.checkpoint.sha256),
        phases,
        total,
        detail,
    )
