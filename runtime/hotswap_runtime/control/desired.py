"""The one idempotent desired-revision path, and the worker that swaps toward it.

The file watcher and the API watcher both call ``offer(revision, generation)``. Offers
are keyed by (revision, sha256): an older ``generation`` than one already seen is
stale and ignored, the same key again is a no-op, and a different key replaces the
desired revision and wakes the worker. The worker swaps toward the desired revision; a
newer offer arriving mid-load makes the load stop at its next phase boundary (or
within a second while downloading). A revision already serving is a no-op, and a
revision that failed for a permanent reason is not retried; transient fetch failures
are retried after a back-off when the revision is offered again (the periodic resync
does that). Failures are remembered in a bounded map, newest kept.

Nothing a load raises can stop the worker: every exception (SystemExit included) is a
failed attempt. The load journal (journal.py) records each attempt in the cache
volume, so a revision that killed the process is refused after the restart and the
revision served before it is loaded again instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from hotswap_contract.redact import clip
from hotswap_contract.wire import AnalysisFigures, Fetched, PodState, Revision, short_sha
from hotswap_runtime.control.journal import LoadJournal, Recovery
from hotswap_runtime.control.target import PhaseClock, Serving, SwapTarget, utc_now
from hotswap_runtime.errors import Superseded, SwapError

log = logging.getLogger(__name__)

KEEP_FAILURES = 64  # failed (revision, sha256) pairs remembered, newest kept
CRASHED = "crashed"


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
    serving: Serving | None
    target: Revision | None
    last_failure: Failure | None
    last_swap: SwapRecord | None
    config_generation: int | None
    analysis: AnalysisFigures | None = None  # what judging the target found so far
    fetched: Fetched | None = None  # where the last checkpoint's bytes came from


class Observer(Protocol):
    def swap_finished(self, record: SwapRecord) -> None: ...
    def config_rejected(self, failure: Failure) -> None: ...
    def status_changed(self, status: Status) -> None: ...


class Reconciler:
    """Holds the desired revision and runs swaps toward it on one worker thread."""

    def __init__(
        self,
        swapper: SwapTarget,
        observers: list[Observer],
        retry_seconds: float = 30.0,
        journal: LoadJournal | None = None,
    ) -> None:
        self.swapper = swapper
        self.observers = observers
        self.retry_seconds = retry_seconds
        self.journal = journal
        self._cond = threading.Condition()
        self._desired: Revision | None = None
        self._generation: int | None = None
        self._loading: Revision | None = None
        self._fallback: Revision | None = None  # served before a crash; loaded instead
        self._failures: OrderedDict[tuple[int, str], Failure] = OrderedDict()
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
        failure = Failure(None, None, "config_error", clip(f"{source}: {reason}"))
        with self._cond:
            self._last_failure = failure
        log.error("model.json rejected (%s): %s", source, reason)
        for observer in self.observers:
            observer.config_rejected(failure)
        self._notify_status()

    # ---- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        if self.journal is not None:
            self._recover(self.journal.recover())
        self._thread.start()

    def _recover(self, recovery: Recovery) -> None:
        """Refuse every revision that crashed this pod; reload what served before."""
        for crash in recovery.crashed:
            reason = (
                f"crashed while loading revision {crash.revision}: the process died "
                "(out of memory, or a fatal error in native code); this pod will not load "
                "it again"
            )
            failure = Failure(crash.revision, crash.sha256, CRASHED, reason)
            self._remember_failure((crash.revision, crash.sha256), failure)
            if crash == recovery.crashed_now:
                self._last_failure = failure
                log.error(
                    "revision %d sha256=%s %s", crash.revision, short_sha(crash.sha256), reason
                )
        serving = recovery.serving
        if recovery.crashed_now is not None and serving is not None:
            self._fallback = serving

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
                analysis=self.swapper.analysis(),
                fetched=self.swapper.fetched(),
            )

    def wanted(self, key: tuple[int, str]) -> bool:
        """Whether a load of ``key`` should go on: it is still what the worker would pick."""
        with self._cond:
            wanted = self._next()
            return wanted is not None and wanted.key == key

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
        if failure.transient and time.monotonic() - failure.monotonic >= self.retry_seconds:
            return desired
        return self._fallback_due(serving is None)

    def _fallback_due(self, idle: bool) -> Revision | None:
        """After a crash, the revision that served before it, while nothing serves."""
        fallback = self._fallback
        if not idle or fallback is None or fallback.key in self._failures:
            return None
        return fallback

    def _remember_failure(self, key: tuple[int, str], failure: Failure) -> None:
        self._failures[key] = failure
        self._failures.move_to_end(key)
        while len(self._failures) > KEEP_FAILURES:
            self._failures.popitem(last=False)

    def _run(self) -> None:
        with contextlib.suppress(OSError):  # loading yields the CPU to serving threads
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        while not self._stopping:
            try:
                self._step()
            except BaseException:  # the worker outlives anything a load does
                log.exception("swap worker: unexpected error; carrying on")
                with self._cond:
                    self._loading = None
                time.sleep(0.1)  # no busy loop if the same error repeats

    def _step(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._stopping or self._next() is not None, 1.0)
            revision = None if self._stopping else self._next()
            if revision is None:
                return
            self._loading = revision
        self._notify_status()
        if self.journal is not None:
            self.journal.loading(revision)
        record = self._attempt(revision)
        self.swapper.release_memory()
        if self.journal is not None:
            serving = self.swapper.current()
            self.journal.settled(serving.revision if serving else None)
        with self._cond:
            self._loading = None
            self._last_swap = record
            if record.failure is not None:
                self._remember_failure(revision.key, record.failure)
                self._last_failure = record.failure
        self._tell(lambda observer: observer.swap_finished(record))
        self._notify_status()

    def _attempt(self, revision: Revision) -> SwapRecord:
        clock = PhaseClock()
        key = revision.key
        try:
            self.swapper.swap_to(revision, lambda: not self.wanted(key), clock, self._notify_status)
        except Superseded as exc:
            _log_swap(revision, "superseded", clock, str(exc))
            return SwapRecord(revision, "superseded", clock.phases, self.swapper.last_kind)
        except SwapError as exc:
            failure = _failure(revision, exc.code, str(exc), exc.transient)
        except BaseException as exc:  # a bug, an odd model, even SystemExit
            log.error("swap to revision %d raised %s", revision.revision, type(exc).__name__)
            reason = f"internal error while loading: {type(exc).__name__}"
            failure = _failure(revision, "internal_error", reason, False)
        else:
            _log_swap(revision, "ok", clock, self.swapper.last_kind)
            return SwapRecord(revision, "ok", clock.phases, self.swapper.last_kind)
        _log_swap(revision, "failed", clock, failure.reason)
        return SwapRecord(revision, "failed", clock.phases, self.swapper.last_kind, failure)

    def _notify_status(self) -> None:
        status = self.status()
        self._tell(lambda observer: observer.status_changed(status))

    def _tell(self, call: Callable[[Observer], None]) -> None:
        """``call`` every observer; one that raises never stops the worker."""
        for observer in self.observers:
            try:
                call(observer)
            except Exception:
                log.exception("observer %s failed", type(observer).__name__)


def _failure(revision: Revision, code: str, reason: str, transient: bool) -> Failure:
    sha = revision.checkpoint.sha256
    return Failure(revision.revision, sha, code, clip(reason), transient=transient)


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
