"""Revision bookkeeping: which revision each pod should serve, as a pure plan.

A revision is a numbered (model, checkpoint, validation). The plan compares the spec's
content digest with the revisions recorded in status and in the current ConfigMap:
the same content keeps its number; new content gets the next number. Strategies
decide where the new revision goes. AllAtOnce makes it stable at once (every pod takes
it; a pod that fails it keeps serving its previous revision). Canary (canary.py) puts
it in `candidate`, names the pods that take it in `candidatePods`, and advances,
promotes or rolls back from the pods' reports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hotswap_runtime.contract import ModelConfig, Revision, short_sha

from hotswap_operator.spec import DeploymentSpec, SpecError

HISTORY_LIMIT = 10


@dataclass(frozen=True)
class RevisionRef:
    """What status records of a revision: `status.stable`, `.candidate`, `.history[]`."""

    revision: int
    uri: str
    sha256: str
    digest: str
    created_at: str = ""

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "revision": self.revision,
            "uri": self.uri,
            "sha256": self.sha256,
            "digest": self.digest,
        }
        if self.created_at:
            out["createdAt"] = self.created_at
        return out

    @classmethod
    def from_status(cls, raw: Mapping[str, Any] | None) -> RevisionRef | None:
        if not raw or "revision" not in raw:
            return None
        return cls(
            revision=int(raw["revision"]),
            uri=str(raw.get("uri", "")),
            sha256=str(raw.get("sha256", "")),
            digest=str(raw.get("digest", "")),
            created_at=str(raw.get("createdAt", "")),
        )


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the ModelDeployment."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    """What reconcile writes: the ConfigMap payload and the status fields it owns."""

    config: ModelConfig
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)


def revision_from_spec(spec: DeploymentSpec, number: int) -> Revision:
    return Revision(
        revision=number,
        model=spec.model,
        checkpoint=spec.checkpoint.to_contract(),
        validation=spec.validation,
    )


def _known_revisions(status: Mapping[str, Any], current: ModelConfig | None) -> list[int]:
    numbers = [
        ref.revision
        for ref in (
            RevisionRef.from_status(status.get("stable")),
            RevisionRef.from_status(status.get("candidate")),
            *(RevisionRef.from_status(h) for h in status.get("history") or ()),
        )
        if ref is not None
    ]
    if current is not None:
        numbers.append(current.stable.revision)
        if current.candidate is not None:
            numbers.append(current.candidate.revision)
    return numbers


def _same_content(a: Revision, b: Revision) -> bool:
    return a.model_copy(update={"revision": 0}) == b.model_copy(update={"revision": 0})


def revision_number(
    spec: DeploymentSpec, status: Mapping[str, Any], current: ModelConfig | None
) -> tuple[int, bool]:
    """The spec's revision number, and whether it is new (not yet in status)."""
    stable = RevisionRef.from_status(status.get("stable"))
    if stable is not None and stable.digest == spec.content_digest():
        return stable.revision, False
    # Status may lag the ConfigMap (a crash between the two writes): adopt its number.
    if current is not None and _same_content(current.stable, revision_from_spec(spec, 1)):
        return current.stable.revision, True
    return max(_known_revisions(status, current), default=0) + 1, True


def config_generation(
    desired: ModelConfig, current: ModelConfig | None, status: Mapping[str, Any]
) -> int:
    """Keep the generation when nothing changed, else one above anything seen."""
    if current is not None and current.model_copy(update={"generation": 0}) == desired:
        return current.generation
    seen = [int(status.get("configGeneration") or 0)]
    if current is not None:
        seen.append(current.generation)
    return max(seen) + 1


def _history(status: Mapping[str, Any], ref: RevisionRef) -> list[dict[str, Any]]:
    entries = [h for h in status.get("history") or () if h.get("revision") != ref.revision]
    return [*entries, ref.to_status()][-HISTORY_LIMIT:]


def plan_all_at_once(
    name: str,
    spec: DeploymentSpec,
    status: Mapping[str, Any],
    current: ModelConfig | None,
    now: str,
    pods: Sequence[str] = (),
) -> Plan:
    """Every pod takes the spec's revision; it becomes stable immediately."""
    number, new = revision_number(spec, status, current)
    stable = revision_from_spec(spec, number)
    desired = ModelConfig(name=name, generation=0, stable=stable)
    config = desired.model_copy(update={"generation": config_generation(desired, current, status)})
    previous = RevisionRef.from_status(status.get("stable"))
    ref = RevisionRef(
        revision=number,
        uri=spec.checkpoint.uri,
        sha256=spec.checkpoint.sha256,
        digest=spec.content_digest(),
        created_at=now if new or previous is None else previous.created_at,
    )
    fields: dict[str, Any] = {
        "stable": ref.to_status(),
        "candidate": None,
        "candidatePods": None,
        "revision": number,
        "checkpoint": short_sha(spec.checkpoint.sha256),
        "configGeneration": config.generation,
        "history": _history(status, ref) if new else status.get("history") or [ref.to_status()],
    }
    events = []
    if new:
        events.append(
            Event(
                "Normal",
                "RevisionCreated",
                f"revision {number}: {spec.checkpoint.uri} "
                f"(sha256 {short_sha(spec.checkpoint.sha256)}), rolling out to all pods",
            )
        )
    return Plan(config=config, status=fields, events=events)


Planner = Callable[
    [str, DeploymentSpec, Mapping[str, Any], ModelConfig | None, str, Sequence[str]], Plan
]


def _plan_canary(
    name: str,
    spec: DeploymentSpec,
    status: Mapping[str, Any],
    current: ModelConfig | None,
    now: str,
    pods: Sequence[str] = (),
) -> Plan:
    from hotswap_operator.canary import plan_canary  # canary builds on this module

    return plan_canary(name, spec, status, current, now, pods)


STRATEGIES: dict[str, Planner] = {"AllAtOnce": plan_all_at_once, "Canary": _plan_canary}


def plan(
    name: str,
    spec: DeploymentSpec,
    status: Mapping[str, Any],
    current: ModelConfig | None,
    now: str,
    pods: Sequence[str] = (),
) -> Plan:
    """The plan of `spec`'s strategy; `pods` are the live runtime pods' names."""
    planner = STRATEGIES.get(spec.rollout.strategy)
    if planner is None:
        raise SpecError(
            f"ModelDeployment {name}: spec.rollout.strategy {spec.rollout.strategy} is not "
            f"supported by this operator version; use one of {', '.join(STRATEGIES)}"
        )
    return planner(name, spec, status, current, now, pods)
