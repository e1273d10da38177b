"""What the reconciler drives: a `SwapTarget`, and what it reads of the serving model.

The reconciler handles no tensors: it asks a target to make a revision serve and reads
back which revision serves. `swap.Swapper` is the real target; the hollow pods of the
dev cluster implement the same protocol with a stand-in load. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from hotswap_contract.wire import AnalysisFigures, Fetched, Revision


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class PhaseClock:
    """Seconds spent in each swap phase, filled as phases run (also when one fails)."""

    phases: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            spent = self.phases.get(phase, 0.0) + time.perf_counter() - start
            self.phases[phase] = round(spent, 6)


class Serving(Protocol):
    """What the reconciler, the report and the metadata read of the serving model."""

    @property
    def revision(self) -> Revision: ...

    @property
    def loaded_at(self) -> str: ...

    @property
    def key(self) -> tuple[int, str]: ...


class SwapTarget(Protocol):
    """Makes a revision serve, or raises `SwapError` leaving the serving one untouched."""

    @property
    def last_kind(self) -> str:
        """How the last attempt loaded (standby, fresh, inplace, ...), for records."""
        ...

    def current(self) -> Serving | None: ...

    def swap_to(
        self,
        revision: Revision,
        cancelled: Callable[[], bool],
        clock: PhaseClock,
        progress: Callable[[], None],
    ) -> object:
        """``cancelled`` says to stop (raise Superseded); ``progress`` that ``analysis``
        changed while the attempt runs (a shadow comparison takes minutes)."""
        ...

    def analysis(self) -> AnalysisFigures | None:
        """What judging the last target found (evaluation set, shadow), if anything."""
        ...

    def fetched(self) -> Fetched | None:
        """Where the bytes of the last checkpoint fetched came from (store, peers, cache)."""
        ...

    def release_memory(self) -> None:
        """Give back what an attempt left in the allocator (called after every attempt)."""
        ...
