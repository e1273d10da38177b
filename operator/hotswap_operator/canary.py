"""The Canary rollout planner (pure): candidate first on a few pods, then step by step.

A new revision (spec content whose digest differs from the stable one) becomes the
`candidate`. The ConfigMap names the pods that take it (`candidatePods`); every other
pod, including pods created mid-rollout that the planner has not named, keeps serving
`stable`. Each evaluation looks at the pods' reports and does at most one thing:

* every named pod serves the candidate (revision and sha256, state Serving): the next
  step names more pods; after the last step (all replicas) the candidate is promoted
  to stable;
* a named pod reports Failed on the candidate, or the step outlives
  `stepTimeoutSeconds`: with `autoRollback` every pod goes back to stable (they load it
  from their checkpoint cache) and `status.rollback` says which pod failed and why
  (phase RolledBack); without it the rollout halts where it is (phase Degraded);
* `paused`: the current step is held (failures still roll back; the step clock
  restarts on resume).

A spec change during a rollout replaces the candidate (back to the first step); a spec
equal to stable again cancels it. The step state lives in `status.canary`;
`step_deadline` says when the current step times out (the sync re-runs then).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from hotswap_contract.wire import ModelConfig, PodReport, PodState, Revision, short_sha
from hotswap_operator.context import SyncContext
from hotswap_operator.reasons import Event, EventType, Phase, Reason
from hotswap_operator.revisions import (
    Plan,
    announce,
    names,
    next_number,
    numbered,
    record,
    revision_from_spec,
    settled,
    with_history,
)
from hotswap_operator.spec import DeploymentSpec
from hotswap_operator.status import CanaryState, ModelDeploymentStatus, RevisionRecord, Rollback

DEFAULT_STEPS: tuple[int | str, ...] = (1, "50%", "100%")


def step_counts(steps: Sequence[int | str], replicas: int) -> tuple[int, ...]:
    """Pod counts per step, increasing, ending at `replicas` (50% of 3 is 2)."""
    counts: list[int] = []
    for raw in steps or DEFAULT_STEPS:
        text = str(raw).strip()
        pct = text.endswith("%")
        count = math.ceil(float(text[:-1]) * replicas / 100) if pct else int(text)
        count = min(max(count, 1), replicas)
        if not counts or count > counts[-1]:
            counts.append(count)
    if not counts or counts[-1] < replicas:
        counts.append(replicas)
    return tuple(counts)


@dataclass(frozen=True)
class Rollout:
    """Everything one evaluation looks at: what the sync read, and the spec parsed."""

    ctx: SyncContext
    spec: DeploymentSpec

    @property
    def digest(self) -> str:
        return self.spec.content_digest()


def plan_canary(ctx: SyncContext, spec: DeploymentSpec) -> Plan:
    """The ConfigMap and status for a Canary ModelDeployment that has a stable revision."""
    status = ctx.status
    stable = status.stable
    if stable is None:
        raise ValueError("plan_canary needs a stable revision (rollout.plan makes the first)")
    r = Rollout(ctx, spec)
    if r.digest == stable.digest:
        return _settled(r, stable, rollback=None, events=[])
    if status.rollback is not None and status.rollback.digest == r.digest:
        return _settled(r, stable, rollback=status.rollback, events=[])  # not retried
    candidate, state = status.candidate, status.canary
    if candidate is None or candidate.digest != r.digest or state is None:
        return _start(r, stable)
    return _progress(r, stable, candidate, state)


# ---- the stable revision and the settled plan ---------------------------------------


def _stable_revision(r: Rollout, stable: RevisionRecord) -> Revision:
    """The full stable revision: from the ConfigMap (which carries model and validation)."""
    if r.ctx.config is not None and r.ctx.config.stable.key == stable.key:
        return r.ctx.config.stable
    checkpoint = r.spec.checkpoint.to_contract().model_copy(
        update={"uri": stable.uri, "sha256": stable.sha256}
    )
    return Revision(revision=stable.revision, model=r.spec.model, checkpoint=checkpoint)


def _config(
    r: Rollout, stable: Revision, candidate: Revision | None, pods: Sequence[str]
) -> ModelConfig:
    desired = ModelConfig(
        name=r.ctx.owner.name,
        generation=0,
        stable=stable,
        candidate=candidate,
        candidatePods=tuple(pods) if candidate is not None else (),
        analysis=r.spec.analysis,
    )
    return numbered(desired, r.ctx.config, r.ctx.status)


def _settled(
    r: Rollout, stable: RevisionRecord, rollback: Rollback | None, events: list[Event]
) -> Plan:
    """No rollout in progress: every pod serves stable."""
    config = _config(r, _stable_revision(r, stable), None, ())
    status = settled(r.ctx.status, stable, config, r.ctx.status.history or (stable,), rollback)
    return Plan(config=config, status=status, events=events)


# ---- starting a candidate -----------------------------------------------------------


def _start(r: Rollout, stable: RevisionRecord) -> Plan:
    written = r.ctx.config.candidate if r.ctx.config is not None else None
    number = next_number(r.spec, r.ctx.status, r.ctx.config, written)
    ref = record(r.spec, number, r.ctx.now)
    steps = step_counts(r.spec.rollout.steps, r.spec.replicas)
    state = CanaryState(
        revision=number, step=1, steps=steps, stepStartedAt=r.ctx.now, paused=r.spec.rollout.paused
    )
    named = choose(r.ctx.live_pods, r.ctx.status.candidate_pods or (), steps[0])
    plan = _running(r, stable, ref, state, named)
    where = (
        f"canary step 1 of {len(steps)} on {names(named)}; "
        f"the other pods keep revision {stable.revision}"
    )
    event = Event(EventType.NORMAL, Reason.REVISION_CREATED, announce(ref, where))
    status = plan.status.model_copy(update={"history": with_history(r.ctx.status, ref)})
    return Plan(config=plan.config, status=status, events=[event])


def choose(pods: Sequence[str], named: Sequence[str], count: int) -> tuple[str, ...]:
    """`count` live pods: those already named first, then others by name."""
    live = sorted(pods)
    keep = [p for p in named if p in live][:count]
    extra = [p for p in live if p not in keep][: max(count - len(keep), 0)]
    return tuple(sorted(keep + extra))


def _running(
    r: Rollout,
    stable: RevisionRecord,
    ref: RevisionRecord,
    state: CanaryState,
    named: Sequence[str],
) -> Plan:
    candidate = revision_from_spec(r.spec, ref.revision)
    config = _config(r, _stable_revision(r, stable), candidate, named)
    status = r.ctx.status.model_copy(
        update={
            "stable": stable,
            "candidate": ref,
            "candidate_pods": tuple(named),
            "canary": state,
            "rollback": None,
            "revision": stable.revision,
            "checkpoint": short_sha(stable.sha256),
            "config_generation": config.generation,
        }
    )
    return Plan(config=config, status=status, events=[])


# ---- progressing --------------------------------------------------------------------


def _progress(r: Rollout, stable: RevisionRecord, ref: RevisionRecord, state: CanaryState) -> Plan:
    named = choose(r.ctx.live_pods, r.ctx.status.candidate_pods or (), state.steps[state.step - 1])
    if state.halted:
        return _running(r, stable, ref, state, named)
    reports = _reports(r.ctx.status)
    failure = _failure(named, reports, ref)
    if failure is None and not r.spec.rollout.paused:
        failure = _timed_out(r, state, named, reports, ref)
    if failure is not None:
        return _fail(r, stable, ref, state, named, failure)
    if r.spec.rollout.paused:
        return _running(r, stable, ref, state.model_copy(update={"paused": True}), named)
    if state.paused:  # resumed: the step clock starts again
        state = state.model_copy(update={"paused": False, "step_started_at": r.ctx.now})
    if not _step_done(named, reports, ref, state):
        return _running(r, stable, ref, state, named)
    if state.step == len(state.steps):
        return _promote(r, ref, named)
    return _advance(r, stable, ref, state, named)


def _reports(status: ModelDeploymentStatus) -> dict[str, PodReport]:
    # unreadable entries: summary.py reports them
    return {p: rep for p, rep in status.reports().items() if isinstance(rep, PodReport)}


def _serves(report: PodReport | None, ref: RevisionRecord) -> bool:
    return (
        report is not None
        and report.state is PodState.SERVING
        and (report.revision, report.sha256) == ref.key
    )


def _failure(
    named: Sequence[str], reports: Mapping[str, PodReport], ref: RevisionRecord
) -> tuple[str, str] | None:
    """(pod, why) for the first named pod that failed the candidate."""
    for pod in named:
        report = reports.get(pod)
        if report is None or report.state is not PodState.FAILED:
            continue
        if report.target_revision != ref.revision or report.target_sha256 not in (
            None,
            ref.sha256,
        ):
            continue
        return pod, f"failed revision {ref.revision}: {report.message or 'no reason given'}"
    return None


def _parse(stamp: str) -> datetime | None:
    try:
        return datetime.fromisoformat(stamp)
    except ValueError:
        return None


def _seconds_between(start: str, end: str) -> float:
    a, b = _parse(start), _parse(end)
    return (b - a).total_seconds() if a is not None and b is not None else 0.0


def _timed_out(
    r: Rollout,
    state: CanaryState,
    named: Sequence[str],
    reports: Mapping[str, PodReport],
    ref: RevisionRecord,
) -> tuple[str, str] | None:
    limit = r.spec.rollout.step_timeout_seconds
    if state.paused or _seconds_between(state.step_started_at, r.ctx.now) <= limit:
        return None
    behind = [p for p in named if not _serves(reports.get(p), ref)] or list(named)
    states = ", ".join(
        f"{p} ({reports[p].state.value})" if p in reports else f"{p} (no report)" for p in behind
    )
    why = (
        f"did not serve revision {ref.revision} within stepTimeoutSeconds {limit} "
        f"(step {state.step} of {len(state.steps)}; waiting for {states})"
    )
    return behind[0], why


def _step_done(
    named: Sequence[str],
    reports: Mapping[str, PodReport],
    ref: RevisionRecord,
    state: CanaryState,
) -> bool:
    want = state.steps[state.step - 1]
    return len(named) >= want and all(_serves(reports.get(p), ref) for p in named)


def _advance(
    r: Rollout,
    stable: RevisionRecord,
    ref: RevisionRecord,
    state: CanaryState,
    named: Sequence[str],
) -> Plan:
    nxt = state.model_copy(update={"step": state.step + 1, "step_started_at": r.ctx.now})
    more = choose(r.ctx.live_pods, named, nxt.steps[nxt.step - 1])
    plan = _running(r, stable, ref, nxt, more)
    event = Event(
        EventType.NORMAL,
        Reason.CANARY_STEP,
        f"revision {ref.revision}: step {state.step} done, step {nxt.step} of "
        f"{len(nxt.steps)}: {len(more)}/{r.spec.replicas} pods ({names(more)})",
    )
    return Plan(config=plan.config, status=plan.status, events=[event])


def _promote(r: Rollout, ref: RevisionRecord, named: Sequence[str]) -> Plan:
    config = _config(r, revision_from_spec(r.spec, ref.revision), None, ())
    status = settled(r.ctx.status, ref, config, r.ctx.status.history)
    event = Event(
        EventType.NORMAL,
        Reason.PROMOTED,
        f"revision {ref.revision} promoted to stable: {len(named)} pods serve it "
        f"(sha256 {short_sha(ref.sha256)})",
    )
    return Plan(config=config, status=status, events=[event])


def _fail(
    r: Rollout,
    stable: RevisionRecord,
    ref: RevisionRecord,
    state: CanaryState,
    named: Sequence[str],
    failure: tuple[str, str],
) -> Plan:
    pod, why = failure
    if not r.spec.rollout.auto_rollback:
        halted = f"rollout of revision {ref.revision} halted: pod {pod} {why}"
        plan = _running(r, stable, ref, state.model_copy(update={"halted": halted}), named)
        event = Event(EventType.WARNING, Reason.ROLLOUT_HALTED, halted)
        return Plan(config=plan.config, status=plan.status, events=[event])
    rollback = Rollback(
        **ref.model_dump(by_alias=True),
        stable=stable.revision,
        pod=pod,
        reason=why,
        rolledBackAt=r.ctx.now,
    )
    event = Event(
        EventType.WARNING,
        Reason.ROLLED_BACK,
        f"revision {ref.revision} rolled back to revision {stable.revision}: pod {pod} {why}",
    )
    return _settled(r, stable, rollback=rollback, events=[event])


# ---- what the sync and summary.py ask -----------------------------------------------


def step_deadline(status: ModelDeploymentStatus, spec: DeploymentSpec) -> datetime | None:
    """When the current step times out (None: no step running, paused or halted)."""
    state = status.canary
    if state is None or status.candidate is None or state.paused or state.halted:
        return None
    started = _parse(state.step_started_at)
    if started is None:
        return None
    return started + timedelta(seconds=spec.rollout.step_timeout_seconds)


def override(status: ModelDeploymentStatus, phase: Phase) -> tuple[Phase, Reason, str] | None:
    """(phase, reason, message) replacing the aggregated phase while a Canary rollout
    runs or after it rolled back; None to keep the aggregated one."""
    if phase is Phase.FAILED:
        return None
    state, candidate = status.canary, status.candidate
    if candidate is not None and state is not None:
        if state.halted:
            return Phase.DEGRADED, Reason.ROLLOUT_HALTED, state.halted
        if phase is Phase.DEGRADED:
            return None  # the stable revision itself fails somewhere: say that
        named = list(status.candidate_pods or ())
        where = (
            f"revision {candidate.revision} on {len(named)} pods ({names(named)}), "
            f"step {state.step} of {len(state.steps)}"
        )
        if state.paused:
            return Phase.PROGRESSING, Reason.PAUSED, f"paused at {where}"
        return Phase.PROGRESSING, Reason.CANARY_STEP, where
    rollback = status.rollback
    if rollback is not None and candidate is None and phase in (Phase.READY, Phase.PROGRESSING):
        return (
            Phase.ROLLED_BACK,
            Reason.ROLLED_BACK,
            f"revision {rollback.revision} rolled back to revision "
            f"{rollback.stable}: pod {rollback.pod} {rollback.reason}",
        )
    return None
