"""Which revision each pod should serve: the strategy table and the AllAtOnce planner.

`plan` is what a sync calls. The first revision of any ModelDeployment is stable at
once (a canary needs something to compare against); after that the spec's strategy
decides. AllAtOnce makes new content stable immediately: every pod takes it, and a pod
that fails it keeps serving its previous revision. Canary is canary.py.
"""

from __future__ import annotations

from collections.abc import Callable

from hotswap_contract.wire import ModelConfig
from hotswap_operator import canary
from hotswap_operator.context import SyncContext
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

Planner = Callable[[SyncContext, DeploymentSpec], Plan]


def plan_all_at_once(ctx: SyncContext, spec: DeploymentSpec) -> Plan:
    """Every pod takes the spec's revision; it becomes stable immediately."""
    status, current = ctx.status, ctx.config
    previous = status.stable
    if previous is not None and previous.digest == spec.content_digest():
        number, new = previous.revision, False
    else:
        written = current.stable if current is not None else None
        number, new = next_number(spec, status, current, written), True
    config = numbered(
        ModelConfig(
            name=ctx.owner.name,
            generation=0,
            stable=revision_from_spec(spec, number),
            analysis=spec.analysis,
        ),
        current,
        status,
    )
    created = previous.created_at if not new and previous is not None else ctx.now
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


def plan(ctx: SyncContext, spec: DeploymentSpec) -> Plan:
    """The plan of `spec`'s strategy for what `ctx` read."""
    planner = STRATEGIES.get(spec.rollout.strategy)
    if planner is None:
        raise SpecError(
            f"ModelDeployment {ctx.owner.name}: spec.rollout.strategy {spec.rollout.strategy} "
            f"is not supported by this operator version; use one of {', '.join(STRATEGIES)}"
        )
    if ctx.status.stable is None:  # nothing to compare a canary against: stable at once
        planner = plan_all_at_once
    return planner(ctx, spec)
