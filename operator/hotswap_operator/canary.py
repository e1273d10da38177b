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

from hotswap_contract.wire import (
    ModelConfig,
    PodReport,
    PodState,
    Revision,
    ShadowFigures,
    short_sha,
)
from hotswap_operator import checks
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
from hotswap_operator.status import (
    CanaryState,
    CheckResult,
    ModelDeploymentStatus,
    RevisionRecord,
    Rollback,
)

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
    rollback = status.rollback
    if rollback is not None and rollback.digest == r.digest:
        if ctx.commands.retry == (rollback.revision, rollback.rolled_back_at):
            return _start(r, stable, retried=rollback)
        return _settled(r, stable, rollback=rollback, events=[])  # not retried
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


def _start(r: Rollout, stable: RevisionRecord, retried: Rollback | None = None) -> Plan:
    written = r.ctx.config.candidate if r.ctx.config is not None else None
    number = next_number(r.spec, r.ctx.status, r.ctx.config, written)
    number = retried.revision if retried is not None else number
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
    if retried is not None:
        why = f"revision {number} retried (rolled back at {retried.rolled_back_at}): {where}"
        event = Event(EventType.NORMAL, Reason.RETRIED, why)
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
    if r.ctx.commands.abort == ref.revision:
        return _fail(r, stable, ref, state, named, ABORTED, abort=True)
    if state.halted:
        return _running(r, stable, ref, state, named)
    reports = _reports(r.ctx.status)
    failure = _failure(named, reports, ref)
    if failure is None and not r.spec.rollout.paused and not state.bake_started_at:
        failure = _timed_out(r, state, named, reports, ref)
    if failure is not None:
        return _fail(r, stable, ref, state, named, failure)
    if r.spec.rollout.paused:
        return _running(r, stable, ref, state.model_copy(update={"paused": True}), named)
    if state.paused:  # resumed: the step clock (and its bake) starts again
        state = state.model_copy(
            update={"paused": False, "step_started_at": r.ctx.now, "bake_started_at": ""}
        )
    if r.ctx.commands.promotes_fully(ref.revision) and state.step < len(state.steps):
        return _advance(r, stable, ref, state, named, to=len(state.steps), promoted=True)
    if not _step_done(named, reports, ref, state):
        return _running(r, stable, ref, state, named)
    if state.step == len(state.steps):
        return _promote(r, ref, named)
    return _bake(r, stable, ref, state, named, reports)


ABORTED = ("", "aborted by kubectl hotswap abort (annotation hotswap.dev/abort)")


# ---- the bake and its checks --------------------------------------------------------


def _bake(
    r: Rollout,
    stable: RevisionRecord,
    ref: RevisionRecord,
    state: CanaryState,
    named: Sequence[str],
    reports: Mapping[str, PodReport],
) -> Plan:
    """The step's pods serve the candidate: bake, judge, then the next step."""
    if r.ctx.commands.promotes(ref.revision, state.step):
        return _advance(r, stable, ref, state, named, promoted=True)
    bake = r.spec.rollout.bake_seconds
    if bake == 0:
        return _advance(r, stable, ref, state, named)
    if not state.bake_started_at:
        started = state.model_copy(update={"bake_started_at": r.ctx.now})
        return _running(r, stable, ref, started, named)
    if _seconds_between(state.bake_started_at, r.ctx.now) < bake:
        return _running(r, stable, ref, state, named)
    if not r.spec.rollout.checks:
        return _advance(r, stable, ref, state, named)
    return _judge(r, stable, ref, state, named, reports)


NO_START = CheckResult(
    metric="window",
    result="Inconclusive",
    message=(
        "no reading of the pods at the start of this bake window on this operator replica"
        " (it restarted or became leader since): a new window begins"
    ),
)


def _judge(
    r: Rollout,
    stable: RevisionRecord,
    ref: RevisionRecord,
    state: CanaryState,
    named: Sequence[str],
    reports: Mapping[str, PodReport],
) -> Plan:
    """The bake window ended: a failed check rolls back, an inconclusive one runs
    another window, all passed advance."""
    window = r.ctx.window
    mine = window is not None and (window.revision, window.step, window.started_at) == (
        ref.revision,
        state.step,
        state.bake_started_at,
    )
    needs_window = any(c.metric != "shadowAgreement" for c in r.spec.rollout.checks)
    if needs_window and not mine:
        return _again(r, stable, ref, state, named, (NO_START,))
    results = checks.evaluate(r.spec.rollout.checks, window, _shadows(named, reports, ref))
    judged = state.model_copy(update={"checks": results, "checked_step": state.step})
    bad = checks.failed(results)
    if bad is not None:
        return _fail(r, stable, ref, judged, named, ("", bad.message), results=results)
    if checks.inconclusive(results) is not None:
        return _again(r, stable, ref, state, named, results)
    return _advance(r, stable, ref, judged, named, passed=results)


def _again(
    r: Rollout,
    stable: RevisionRecord,
    ref: RevisionRecord,
    state: CanaryState,
    named: Sequence[str],
    results: Sequence[CheckResult],
) -> Plan:
    """Another bake window for this step, the inconclusive results kept in status."""
    nxt = state.model_copy(
        update={
            "bake_started_at": r.ctx.now,
            "windows": state.windows + 1,
            "checks": tuple(results),
            "checked_step": state.step,
        }
    )
    plan = _running(r, stable, ref, nxt, named)
    unsure = checks.inconclusive(results) or results[0]
    why = (
        f"revision {ref.revision} step {state.step}: bake window {nxt.windows} inconclusive"
        f" ({unsure.message}); another window of {r.spec.rollout.bake_seconds} s runs"
        " (kubectl hotswap promote or abort decides instead)"
    )
    event = Event(EventType.WARNING, Reason.ANALYSIS_INCONCLUSIVE, why)
    return Plan(config=plan.config, status=plan.status, events=[event])


def _shadows(
    named: Sequence[str], reports: Mapping[str, PodReport], ref: RevisionRecord
) -> dict[str, ShadowFigures]:
    """The candidate pods' shadow figures for the candidate."""
    out: dict[str, ShadowFigures] = {}
    for pod in named:
        found = reports[pod].analysis if pod in reports else None
        if found is not None and found.shadow and found.shadow.revision == ref.revision:
            out[pod] = found.shadow
    return out


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
    to: int | None = None,
    promoted: bool = False,
    passed: Sequence[CheckResult] = (),
) -> Plan:
    """The next step (or step `to`): more pods take the candidate; its own bake later."""
    step = to or state.step + 1
    nxt = state.model_copy(
        update={"step": step, "step_started_at": r.ctx.now, "bake_started_at": "", "windows": 0}
    )
    more = choose(r.ctx.live_pods, named, nxt.steps[nxt.step - 1])
    plan = _running(r, stable, ref, nxt, more)
    where = (
        f"step {nxt.step} of {len(nxt.steps)}: {len(more)}/{r.spec.replicas} pods ({names(more)})"
    )
    done = f"revision {ref.revision}: step {state.step} done, {where}"
    events = [Event(EventType.NORMAL, Reason.CANARY_STEP, done)]
    if promoted:
        how = "the rest of the rollout" if to else f"the rest of step {state.step}'s bake"
        why = f"revision {ref.revision}: kubectl hotswap promote skipped {how}; {where}"
        events = [Event(EventType.NORMAL, Reason.STEP_PROMOTED, why)]
    if passed:
        figures = "; ".join(c.message for c in passed)
        events.insert(
            0,
            Event(
                EventType.NORMAL,
                Reason.ANALYSIS_PASSED,
                f"revision {ref.revision} step {state.step}: {figures}",
            ),
        )
    return Plan(config=plan.config, status=plan.status, events=events)


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


def cause(pod: str, why: str) -> str:
    """A failure as status and Events say it: "pod P failed ..." or a check's sentence."""
    return f"pod {pod} {why}" if pod else why


def _fail(
    r: Rollout,
    stable: RevisionRecord,
    ref: RevisionRecord,
    state: CanaryState,
    named: Sequence[str],
    failure: tuple[str, str],
    results: Sequence[CheckResult] = (),
    abort: bool = False,
) -> Plan:
    pod, why = failure
    first = (
        [
            Event(
                EventType.WARNING,
                Reason.ANALYSIS_FAILED,
                f"revision {ref.revision} step {state.step}: {why}",
            )
        ]
        if results
        else []
    )
    if not r.spec.rollout.auto_rollback and not abort:
        halted = f"rollout of revision {ref.revision} halted: {cause(pod, why)}"
        plan = _running(r, stable, ref, state.model_copy(update={"halted": halted}), named)
        event = Event(EventType.WARNING, Reason.ROLLOUT_HALTED, halted)
        return Plan(config=plan.config, status=plan.status, events=[*first, event])
    rollback = Rollback(
        **ref.model_dump(by_alias=True),
        stable=stable.revision,
        pod=pod,
        reason=why,
        rolledBackAt=r.ctx.now,
        checks=tuple(results),
    )
    told = f"revision {ref.revision} rolled back to revision {stable.revision}: {cause(pod, why)}"
    reason = Reason.ABORTED if abort else Reason.ROLLED_BACK
    event = Event(EventType.WARNING, reason, told)
    return _settled(r, stable, rollback=rollback, events=[*first, event])


# ---- what the sync and summary.py ask -----------------------------------------------


def step_deadline(status: ModelDeploymentStatus, spec: DeploymentSpec) -> datetime | None:
    """When the current step times out (None: no step running, paused or halted)."""
    state = status.canary
    if state is None or status.candidate is None or state.paused or state.halted:
        return None
    if state.bake_started_at:  # baking: the window ends (no step timeout now)
        baked = _parse(state.bake_started_at)
        return None if baked is None else baked + timedelta(seconds=spec.rollout.bake_seconds)
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
        if state.bake_started_at:
            return (
                Phase.PROGRESSING,
                Reason.BAKING,
                f"{where}: baking since {state.bake_started_at}",
            )
        return Phase.PROGRESSING, Reason.CANARY_STEP, where
    rollback = status.rollback
    if rollback is not None and candidate is None and phase in (Phase.READY, Phase.PROGRESSING):
        return (
            Phase.ROLLED_BACK,
            Reason.ROLLED_BACK,
            f"revision {rollback.revision} rolled back to revision "
            f"{rollback.stable}: {cause(rollback.pod, rollback.reason)}",
        )
    return None
