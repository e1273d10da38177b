"""Canary bake windows: the pods' readings at a window's start, kept by this replica,
and the window's traffic when it ends (the I/O around the pure planner).

The planner starts a bake window by writing `status.canary.bakeStartedAt`; after that
status write the sync reads every pod's /metrics (`begin`). The sync that finds the
window over (its deadline is a delayed requeue) reads them again before it decides
(`measure`) and hands the difference to the planner as `SyncContext.window`. The start
reading lives in this replica's memory only: after a restart or a change of leader the
planner finds no matching window and runs a new one (status says so), rather than
judging a window it did not see begin.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from hotswap_operator import scrape
from hotswap_operator.context import PodInfo, SyncContext
from hotswap_operator.scrape import Reading
from hotswap_operator.spec import SpecError, parse_spec
from hotswap_operator.status import ModelDeploymentStatus
from hotswap_operator.traffic import Window, window_traffic

Key = tuple[str, str]
Reader = Callable[[Sequence[PodInfo]], Reading]


@dataclass(frozen=True)
class Start:
    """The reading at the start of one bake window: (revision, step, bakeStartedAt)."""

    revision: int
    step: int
    started_at: str
    reading: Reading


def _baking(status: ModelDeploymentStatus) -> tuple[int, int, str] | None:
    state, candidate = status.canary, status.candidate
    if state is None or candidate is None or state.paused or state.halted:
        return None
    if not state.bake_started_at:
        return None
    return (candidate.revision, state.step, state.bake_started_at)


def _reads_traffic(raw_spec: object) -> tuple[int, bool]:
    """(bakeSeconds, whether a check needs the pods' request figures)."""
    try:
        spec = parse_spec(raw_spec if isinstance(raw_spec, dict) else {})
    except SpecError:
        return 0, False
    rollout = spec.rollout
    return rollout.bake_seconds, any(c.metric != "shadowAgreement" for c in rollout.checks)


class Windows:
    """Start readings by ModelDeployment (at most one window each)."""

    def __init__(self, reader: Reader = scrape.read) -> None:
        self.reader = reader
        self.starts: dict[Key, Start] = {}

    def forget(self, key: Key) -> None:
        self.starts.pop(key, None)

    def measure(self, key: Key, ctx: SyncContext) -> Window | None:
        """Before deciding: the window that is over by `ctx.now` and began on this
        replica, read now; None otherwise (the planner says why)."""
        baking = _baking(ctx.status)
        bake, reads = _reads_traffic(dict(ctx.raw_spec))
        start = self.starts.get(key)
        if baking is None or not reads or start is None:
            return None
        if (start.revision, start.step, start.started_at) != baking:
            return None
        if _elapsed(baking[2], ctx.now) < bake:
            return None
        end = self.reader(self._pods(ctx.pods, ctx.status))
        return _window(start, end, ctx.status)

    def begin(self, key: Key, status: ModelDeploymentStatus, pods: Sequence[PodInfo]) -> None:
        """After the status write: read the pods when a new window began."""
        baking = _baking(status)
        if baking is None:
            self.forget(key)
            return
        start = self.starts.get(key)
        if start is not None and (start.revision, start.step, start.started_at) == baking:
            return
        self.starts[key] = Start(*baking, reading=self.reader(self._pods(pods, status)))

    @staticmethod
    def _pods(pods: Sequence[PodInfo], status: ModelDeploymentStatus) -> list[PodInfo]:
        return scrape.chosen(pods, status.candidate_pods or ())


def _elapsed(start: str, now: str) -> float:
    try:
        return (datetime.fromisoformat(now) - datetime.fromisoformat(start)).total_seconds()
    except ValueError:
        return 0.0


def _window(start: Start, end: Reading, status: ModelDeploymentStatus) -> Window:
    stable = str(status.stable.revision) if status.stable is not None else ""
    unread = {**start.reading.unread, **end.unread}
    return Window(
        revision=start.revision,
        step=start.step,
        started_at=start.started_at,
        seconds=max(end.at - start.reading.at, 0.0),
        canary=window_traffic(start.reading.samples, end.samples, str(start.revision)),
        stable=window_traffic(start.reading.samples, end.samples, stable),
        unread=tuple(f"{pod}: {why}" for pod, why in sorted(unread.items())),
    )
