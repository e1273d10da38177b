"""Which revision each pod should serve: the strategy table and the AllAtOnce planner.

`plan` is what a sync calls. The first revision of any ModelDeployment is stable at
once (a canary needs something to compare against); after that the spec's strategy
decides. AllAtOnce makes new content stable immediately: every pod takes it, and a pod
that fails it keeps serving its previous revision. Canary is canary.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hotswap_contract.wire import ModelConfig
from hotswap_operator import canary
from hotswap_operator.reasons import Event, EventType, Reason
from hotswap_operator.revisions import (
    Plan,
    announce,
    next_number,
    numbered,
    record,
    revision_from_spec,
    settled,
    with_history,
)
from hotswap_operator.spec import DeploymentSpec, SpecError
from hotswap_operator.status import ModelDeploymentStatus

Planner = Callable[
    [str, DeploymentSpec, ModelDeploymentStatus, ModelConfig | None, str, Sequence[str]], Plan
]


def plan_all_at_once(
    name: str,
    spec: DeploymentSpec,
    status: ModelDeploymentStatus,
    current: ModelConfig | None,
    now: str,
    pods: Sequence[str] = (),
) -> Plan:
    """Every pod takes the spec's revision; it becomes stable immediately."""
    previous = status.stable
    if previous is not None and previous.digest == spec.content_digest():
        number, new = previous.revision, False
    else:
        written = current.stable if current is not None else None
        number, new = next_number(spec, status, current, written), True
    config = numbered(
        ModelConfig(name=name, generation=0, stable=revision_from_spec(spec, number)),
        current,
        status,
    )
    created = previous.created_at if not new and previous is not None else now
    ref = record(spec, number, created)
    history = with_history(status, ref) if new else status.history or (ref,)
    planned = settled(status, ref, config, history)
    events = []
    if new:
        message = announce(ref, "rolling out to all pods")
        events.append(Event(EventType.NORMAL, Reason.REVISION_CREATED, message))
    return Plan(config=config, status=planned, events=events)


STRATEGIES: dict[str, Planner] = {
    "AllAtOnce": plan_all_at_once,
    "Canary": canary.plan_canary,
}


def plan(
    name: str,
    spec: DeploymentSpec,
    status: ModelDeploymentStatus,
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
    if status.stable is None:  # nothing to compare a canary against: stable at once
        planner = plan_all_at_once
    return planner(name, spec, status, current, now, pods)
