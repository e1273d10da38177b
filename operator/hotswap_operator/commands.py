"""One-shot commands to a Canary rollout, as annotations on the ModelDeployment (pure).

`kubectl hotswap promote|abort|retry` writes them; the Canary planner acts on them.
Each value names the revision (and step, or rollback) it is meant for, so a command is
idempotent (writing it twice is writing it once) and a stale one does nothing: the
operator never has to remove it (it writes only status), and a command can never reach
a revision it was not written for.

* `hotswap.dev/promote: "<revision>/<step>"`: skip the rest of that step's bake and its
  checks; `"<revision>/full"`: skip every remaining step and bake (all pods take the
  candidate, then it is promoted once they serve it).
* `hotswap.dev/abort: "<revision>"`: roll that candidate back now (as a failed check
  does, whatever `autoRollback` says).
* `hotswap.dev/retry: "<revision>/<rolledBackAt>"`: run that rolled-back revision again
  from step 1, under the same number (the rollback is named by its time, so the same
  revision failing again is not retried again by the same command).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PROMOTE = "hotswap.dev/promote"
ABORT = "hotswap.dev/abort"
RETRY = "hotswap.dev/retry"
FULL = "full"


@dataclass(frozen=True)
class Commands:
    promote: tuple[int, str] | None = None  # (revision, step number or "full")
    abort: int | None = None
    retry: tuple[int, str] | None = None  # (revision, rolledBackAt)

    def promotes(self, revision: int, step: int) -> bool:
        return self.promote is not None and self.promote in (
            (revision, str(step)),
            (revision, FULL),
        )

    def promotes_fully(self, revision: int) -> bool:
        return self.promote == (revision, FULL)


def promote_value(revision: int, step: int | None) -> str:
    return f"{revision}/{FULL if step is None else step}"


def retry_value(revision: int, rolled_back_at: str) -> str:
    return f"{revision}/{rolled_back_at}"


def read_commands(metadata: Mapping[str, Any]) -> Commands:
    """The commands in `metadata.annotations`; a malformed one is ignored."""
    notes = metadata.get("annotations") or {}
    return Commands(
        promote=_pair(notes.get(PROMOTE)),
        abort=_number(notes.get(ABORT)),
        retry=_pair(notes.get(RETRY)),
    )


def _number(text: object) -> int | None:
    return int(text) if isinstance(text, str) and text.isdigit() else None


def _pair(text: object) -> tuple[int, str] | None:
    if not isinstance(text, str) or "/" not in text:
        return None
    head, _, tail = text.partition("/")
    number = _number(head)
    return (number, tail) if number is not None and tail else None
