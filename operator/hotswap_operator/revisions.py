"""Revisions and plans: what both rollout planners build on (pure).

A revision is a numbered (model, checkpoint, validation). The same content keeps its
number; new content gets one above every number known (status and the current
ConfigMap, so a crash between the two writes is adopted, not renumbered). A `Plan` is
what a planner returns: the `model.json` to write, the status with the planner's fields
set, and the Events the step is worth; `settled` is the status of a revision every pod
serves. rollout.py (AllAtOnce and the strategy table)
and canary.py import this module; neither imports the other's internals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hotswap_contract.wire import ModelConfig, Revision, short_sha
from hotswap_operator.reasons import Event
from hotswap_operator.spec import DeploymentSpec
from hotswap_operator.status import ModelDeploymentStatus, RevisionRecord, Rollback

HISTORY_LIMIT = 10


@dataclass(frozen=True)
class Plan:
    """What a planner decides: the ConfigMap payload, the status with the planner's
    fields set (stable, candidate, candidatePods, canary, rollback, revision,
    checkpoint, configGeneration, history), and the Events worth posting."""

    config: ModelConfig
    status: ModelDeploymentStatus
    events: list[Event] = field(default_factory=list)


def revision_from_spec(spec: DeploymentSpec, number: int) -> Revision:
    return Revision(
        revision=number,
        model=spec.model,
        checkpoint=spec.checkpoint.to_contract(),
        validation=spec.validation,
    )


def record(spec: DeploymentSpec, number: int, created_at: str | None) -> RevisionRecord:
    """What status records of revision `number` made from `spec`."""
    return RevisionRecord(
        revision=number,
        uri=spec.checkpoint.uri,
        sha256=spec.checkpoint.sha256,
        digest=spec.content_digest(),
        createdAt=created_at or None,
    )


def same_content(a: Revision, b: Revision) -> bool:
    return a.model_copy(update={"revision": 0}) == b.model_copy(update={"revision": 0})


def known_numbers(status: ModelDeploymentStatus, current: ModelConfig | None) -> list[int]:
    """Every revision number status or the current model.json mentions."""
    refs = [status.stable, status.candidate, status.rollback, *(status.history or ())]
    numbers = [ref.revision for ref in refs if ref is not None]
    if current is not None:
        numbers.append(current.stable.revision)
        if current.candidate is not None:
            numbers.append(current.candidate.revision)
    return numbers


def next_number(
    spec: DeploymentSpec,
    status: ModelDeploymentStatus,
    current: ModelConfig | None,
    written: Revision | None,
) -> int:
    """The number for the spec's content as a new revision: `written`'s (the revision
    model.json already carries for it, when status lags the ConfigMap), else one above
    every known number."""
    if written is not None and same_content(written, revision_from_spec(spec, 1)):
        return written.revision
    return max(known_numbers(status, current), default=0) + 1


def config_generation(
    desired: ModelConfig, current: ModelConfig | None, status: ModelDeploymentStatus
) -> int:
    """Keep the generation when nothing changed, else one above anything seen."""
    if current is not None and current.model_copy(update={"generation": 0}) == desired:
        return current.generation
    seen = [status.config_generation or 0]
    if current is not None:
        seen.append(current.generation)
    return max(seen) + 1


def numbered(
    desired: ModelConfig, current: ModelConfig | None, status: ModelDeploymentStatus
) -> ModelConfig:
    """`desired` (generation 0) with its generation set by `config_generation`."""
    return desired.model_copy(update={"generation": config_generation(desired, current, status)})


def with_history(status: ModelDeploymentStatus, ref: RevisionRecord) -> tuple[RevisionRecord, ...]:
    """status.history with `ref` last (replacing an entry of the same number)."""
    entries = [h for h in status.history or () if h.revision != ref.revision]
    return (*entries, ref)[-HISTORY_LIMIT:]


def settled(
    status: ModelDeploymentStatus,
    stable: RevisionRecord,
    config: ModelConfig,
    history: tuple[RevisionRecord, ...] | None,
    rollback: Rollback | None = None,
) -> ModelDeploymentStatus:
    """`status` settled at revision `stable`: every pod serves it (no candidate, no
    canary step), `config` its model.json, with `history` and `rollback` as given."""
    return status.model_copy(
        update={
            "stable": stable,
            "candidate": None,
            "candidate_pods": None,
            "canary": None,
            "rollback": rollback,
            "revision": stable.revision,
            "checkpoint": short_sha(stable.sha256),
            "config_generation": config.generation,
            "history": history,
        }
    )


def names(pods: Sequence[str]) -> str:
    return ", ".join(pods) if pods else "no pod yet"


def announce(ref: RevisionRecord, where: str) -> str:
    """The RevisionCreated message."""
    return f"revision {ref.revision}: {ref.uri} (sha256 {short_sha(ref.sha256)}), {where}"
