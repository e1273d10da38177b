"""What the pods' reports add up to (pure): counts, phase, conditions, and the Events
worth posting for what changed.

Runtime pods report in their own ModelReplica objects (contract.PodReport). From those
reports and the live pods (the controller's caches), `summarize` computes replica
counts, the printable UPDATED / READY strings, the phase, the Ready / Progressing /
Degraded conditions and the first few failing pods; `apply` sets them on a status
(`status.set_condition`: a condition's lastTransitionTime moves only when it flips).
Whatever N, what it writes is bounded: messages and `failures` name at most
MAX_FAILURES pods.
`transition_events` and `pod_events` say which changes deserve an Event.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from hotswap_contract.redact import clip
from hotswap_contract.wire import PodReport, PodState, short_sha
from hotswap_operator import canary
from hotswap_operator.context import PodInfo
from hotswap_operator.reasons import ConditionType, Event, EventType, Phase, Reason
from hotswap_operator.spec import DisruptionBudget
from hotswap_operator.status import (
    MAX_FAILURES,
    ConditionValue,
    ModelDeploymentStatus,
    PodFailure,
    RevisionRecord,
    set_condition,
)

C = ConditionType


@dataclass(frozen=True)
class Summary:
    replicas: int
    ready_replicas: int
    updated_replicas: int
    desired: int
    phase: Phase
    conditions: tuple[ConditionValue, ...]
    serving: str | None = None  # revisions the ready pods answer with, "2,3"
    failures: tuple[PodFailure, ...] = ()  # at most MAX_FAILURES, by pod name
    failed: int = 0  # every live pod failing the stable revision
    message: str | None = None  # what holds the rollout back: failures, else pod problems


def _serves(report: PodReport | str | None, stable: RevisionRecord) -> bool:
    return isinstance(report, PodReport) and (report.revision, report.sha256) == stable.key


def _failure(report: PodReport | str | None, stable: RevisionRecord) -> str | None:
    """How a pod fails the stable revision (the text after its name), or None."""
    if isinstance(report, str):
        return f"sent an {report}"
    if report is None or report.state is not PodState.FAILED:
        return None
    if report.target_revision not in (None, stable.revision):
        return None  # an old failure, superseded by a newer target
    serving = f"still serving revision {report.revision}" if report.revision else "serving nothing"
    cause = clip(report.message) or "no reason given"
    return f"failed revision {stable.revision}: {cause} ({serving})"


def _more(total: int) -> str:
    left = total - MAX_FAILURES
    return f" (and {left} more {'pod' if left == 1 else 'pods'})" if left > 0 else ""


def _failure_message(failures: Sequence[tuple[str, str]]) -> str:
    """One sentence per distinct cause, naming the first MAX_FAILURES pods."""
    by_cause: dict[str, list[str]] = {}
    for pod, why in failures[:MAX_FAILURES]:
        by_cause.setdefault(why, []).append(pod)
    message = "; ".join(
        f"{'pod' if len(pods) == 1 else 'pods'} {', '.join(pods)} {why}"
        for why, pods in by_cause.items()
    )
    return message + _more(len(failures))


def _waiting(pods: Sequence[PodInfo], reports: Mapping[str, PodReport | str]) -> str:
    parts = []
    for pod in pods[:MAX_FAILURES]:
        report = reports.get(pod.name)
        state = report.state.value if isinstance(report, PodReport) else "no report yet"
        parts.append(f"{pod.name} ({pod.problem or state})")
    return ", ".join(parts) + _more(len(pods))


def minimum_serving(budget: DisruptionBudget, desired: int) -> int:
    """Pods that must serve for condition Available: the disruption budget's
    minAvailable, else desired minus maxUnavailable (default 1), percentages rounded as
    a PodDisruptionBudget rounds them (up); at least one pod unless none is desired."""
    if desired <= 0:
        return 0
    if budget.min_available is not None:
        wanted = _scaled(budget.min_available, desired)
    else:
        unavailable = budget.max_unavailable if budget.max_unavailable is not None else 1
        wanted = desired - _scaled(unavailable, desired)
    return min(max(wanted, 1), desired)


def _scaled(value: int | str, total: int) -> int:
    if isinstance(value, int):
        return value
    return math.ceil(int(value.rstrip("%")) * total / 100)


def _available(
    live: Sequence[PodInfo], reports: Mapping[str, PodReport | str], required: int
) -> ConditionValue:
    """Available: at least `required` ready pods answer with some revision (whichever:
    a rollout or a refused checkpoint leaves the old one serving)."""
    answering = sum(
        pod.ready
        and isinstance(report := reports.get(pod.name), PodReport)
        and report.revision is not None
        for pod in live
    )
    message = f"{answering} ready pods serve a revision, {required} needed"
    if answering >= required:
        return ConditionValue(C.AVAILABLE, True, Reason.MINIMUM_PODS_SERVING, message)
    return ConditionValue(C.AVAILABLE, False, Reason.TOO_FEW_PODS_SERVING, message)


def _problems(pods: Sequence[PodInfo]) -> str:
    """The kubelet's or scheduler's reasons the pods do not run, one per distinct cause."""
    troubled = [(p.name, f"not running ({p.problem})") for p in pods if p.problem]
    return _failure_message(troubled)


def _pod_failures(
    failing: Sequence[PodInfo], reports: Mapping[str, PodReport | str], stable: RevisionRecord
) -> tuple[PodFailure, ...]:
    out = []
    for pod in failing[:MAX_FAILURES]:
        report = reports.get(pod.name)
        if isinstance(report, PodReport):
            reason = clip(report.message) or "no reason given"
            out.append(PodFailure(pod=pod.name, revision=stable.revision, reason=reason))
        else:
            out.append(PodFailure(pod=pod.name, reason=f"sent an {report}"))
    return tuple(out)


def _phase(
    desired: int,
    live: Sequence[PodInfo],
    reports: Mapping[str, PodReport | str],
    updated: int,
    failures: Sequence[tuple[str, str]],
) -> Phase:
    serving_any = any(
        isinstance(r, PodReport) and r.revision is not None
        for r in (reports.get(p.name) for p in live)
    )
    ready = sum(p.ready for p in live)
    if failures:
        return Phase.DEGRADED if serving_any else Phase.FAILED
    if updated == desired == len(live) and ready == desired:
        return Phase.READY
    return Phase.PROGRESSING if serving_any else Phase.PENDING


_READY_REASONS = {
    Phase.PENDING: Reason.PODS_STARTING,
    Phase.PROGRESSING: Reason.UPDATING,
    Phase.READY: Reason.ALL_PODS_SERVING,
    Phase.DEGRADED: Reason.SWAP_FAILED,
    Phase.FAILED: Reason.NO_POD_SERVING,
    Phase.ROLLED_BACK: Reason.ROLLED_BACK,
}
_PROGRESS_REASONS = {
    Phase.PENDING: Reason.PODS_STARTING,
    Phase.PROGRESSING: Reason.ROLLING_OUT,
    Phase.READY: Reason.ROLLOUT_COMPLETE,
    Phase.DEGRADED: Reason.ROLLOUT_STALLED,
    Phase.FAILED: Reason.ROLLOUT_STALLED,
    Phase.ROLLED_BACK: Reason.ROLLED_BACK,
}


def serving(live: Sequence[PodInfo], reports: Mapping[str, PodReport | str]) -> str | None:
    """The revisions ready pods report answering with, lowest first ("2", "2,3"); None
    when no ready pod reports one. Never the revision pods are asked to take: a failed
    revision shows in phase and conditions, not here."""
    revisions = {
        report.revision
        for pod in live
        if pod.ready
        and isinstance(report := reports.get(pod.name), PodReport)
        and report.revision is not None
    }
    return ",".join(str(r) for r in sorted(revisions)) or None


def summarize(
    desired: int,
    status: ModelDeploymentStatus,
    pods: Sequence[PodInfo],
    required: int = 1,
    creating: str = "",
) -> Summary:
    """Counts, phase and conditions of a ModelDeployment from its pods' reports;
    ``required``: the pods that must serve for Available (`minimum_serving`);
    ``creating``: why its Deployment cannot create pods (pod_problems.creation)."""
    reports = status.reports()  # parsed once per sync
    summary = _summarize(desired, status, pods, reports)
    live = sorted((p for p in pods if not p.terminating), key=lambda p: p.name)
    available = _available(live, reports, min(required, desired))
    behind = [p for p in live if not (p.ready and isinstance(reports.get(p.name), PodReport))]
    uncreated = f"pods cannot be created ({creating})" if creating and len(live) < desired else ""
    conditions = tuple(_with_uncreated(c, uncreated) for c in summary.conditions)
    held = "; ".join(filter(None, (uncreated, _problems(behind))))
    return replace(
        summary,
        serving=serving(live, reports),
        conditions=(available, *conditions),
        message=summary.message or held or None,
    )


def _with_uncreated(value: ConditionValue, uncreated: str) -> ConditionValue:
    """Progressing says why pods it waits for were never made (pods that exist and do
    not run are named with their reason among those it waits for)."""
    if not uncreated or value.type is not C.PROGRESSING or not value.status:
        return value
    return replace(value, message=f"{value.message}; {uncreated}")


def _summarize(
    desired: int,
    status: ModelDeploymentStatus,
    pods: Sequence[PodInfo],
    reports: Mapping[str, PodReport | str],
) -> Summary:
    live = [p for p in pods if not p.terminating]
    ready = sum(p.ready for p in live)
    stable = status.stable
    if status.error or stable is None:
        phase, reason = (Phase.PENDING, Reason.NO_REVISION)
        if status.error:
            phase, reason = (Phase.FAILED, Reason.INVALID_SPEC)
        message = status.error or "waiting for the operator to write revision 1"
        conditions = (
            ConditionValue(C.READY, False, reason, message),
            ConditionValue(C.PROGRESSING, not status.error, reason, message),
            ConditionValue(C.DEGRADED, bool(status.error), reason, message),
        )
        return Summary(len(live), ready, 0, desired, phase, conditions, message=status.error)
    updated = sum(_serves(reports.get(p.name), stable) for p in live)
    live = sorted(live, key=lambda p: p.name)
    failures = [(p.name, f) for p in live if (f := _failure(reports.get(p.name), stable))]
    failing = [p for p in live if p.name in dict(failures)]
    phase = _phase(desired, live, reports, updated, failures)
    target = f"revision {stable.revision} (sha256 {short_sha(stable.sha256)})"
    counts = f"{updated}/{desired} pods serve {target}, {ready}/{desired} ready"
    behind = [p for p in live if not (_serves(reports.get(p.name), stable) and p.ready)]
    waiting = f"{counts}; waiting for {_waiting(behind, reports)}" if behind else counts
    if len(live) != desired:
        waiting = f"{waiting}; {len(live)} of {desired} pods exist"
    failed_msg = _failure_message(failures)
    base = Summary(
        len(live),
        ready,
        updated,
        desired,
        phase,
        (),
        failures=_pod_failures(failing, reports, stable),
        failed=len(failures),
        message=failed_msg or None,
    )
    shown = canary.override(status, phase)  # a Canary rollout says where it stands
    if shown is not None:
        return _canary_summary(base, counts, shown)
    conditions = (
        ConditionValue(C.READY, phase is Phase.READY, _READY_REASONS[phase], counts),
        ConditionValue(
            C.PROGRESSING,
            phase in (Phase.PENDING, Phase.PROGRESSING),
            _PROGRESS_REASONS[phase],
            failed_msg or waiting if phase is not Phase.READY else counts,
        ),
        ConditionValue(
            C.DEGRADED,
            bool(failures),
            _READY_REASONS[phase] if failures else Reason.NO_FAILURES,
            failed_msg or "no pod reports a failure",
        ),
    )
    return replace(base, conditions=conditions)


def _canary_summary(base: Summary, counts: str, shown: tuple[Phase, Reason, str]) -> Summary:
    phase, reason, message = shown
    degraded = phase is Phase.DEGRADED
    conditions = (
        ConditionValue(C.READY, base.phase is Phase.READY, _READY_REASONS[base.phase], counts),
        ConditionValue(C.PROGRESSING, phase is Phase.PROGRESSING, reason, message),
        ConditionValue(C.DEGRADED, degraded, reason if degraded else Reason.NO_FAILURES, message),
    )
    return replace(base, phase=phase, conditions=conditions)


MESSAGE_CHARS = 2048  # status.message (the CRD allows 4096)


def apply(
    status: ModelDeploymentStatus,
    summary: Summary,
    now: str,
    generation: int,
    deadline: int | None = None,
) -> ModelDeploymentStatus:
    """`status` with the summary's counts, phase and conditions; with ``deadline``
    (spec.progressDeadlineSeconds), a rollout that has not moved for that long is
    Progressing False, ProgressDeadlineExceeded."""
    for value in summary.conditions:
        if value.type is C.PROGRESSING and deadline is not None:
            value = _progress(status, summary, value, now, generation, deadline)
        status = set_condition(status, value, now, generation)
    message = clip(summary.message, MESSAGE_CHARS) if summary.message else None
    return status.model_copy(
        update={
            "replicas": summary.replicas,
            "ready_replicas": summary.ready_replicas,
            "updated_replicas": summary.updated_replicas,
            "updated": f"{summary.updated_replicas}/{summary.desired}",
            "ready": f"{summary.ready_replicas}/{summary.desired}",
            "serving": summary.serving,
            "phase": summary.phase,
            "failed_replicas": summary.failed,
            "failures": summary.failures or None,
            "message": message,
        }
    )


def _progress(
    status: ModelDeploymentStatus,
    summary: Summary,
    value: ConditionValue,
    now: str,
    generation: int,
    deadline: int,
) -> ConditionValue:
    """Progressing with its lastUpdateTime: moved to ``now`` when the rollout moved (a
    pod newly serving the stable revision or newly ready, a pod more or fewer, a new
    generation, a rollout starting); False once it has not moved for ``deadline`` s."""
    if not value.status:
        return value
    before = status.condition(C.PROGRESSING)
    counts = (summary.updated_replicas, summary.ready_replicas, summary.replicas)
    ongoing = before is not None and (
        before.status == "True" or before.reason == Reason.PROGRESS_DEADLINE_EXCEEDED
    )
    moved = (
        not ongoing
        or before is None
        or before.observed_generation != generation
        or counts != (status.updated_replicas, status.ready_replicas, status.replicas)
    )
    since = now if moved or before is None else (before.last_update_time or now)
    if moved or _elapsed(since, now) < deadline:
        return replace(value, last_update=since)
    message = f"no progress for {deadline}s (spec.progressDeadlineSeconds): {value.message}"
    return ConditionValue(
        C.PROGRESSING, False, Reason.PROGRESS_DEADLINE_EXCEEDED, message, last_update=since
    )


def progress_due(status: ModelDeploymentStatus, deadline: int, now: str) -> float | None:
    """Seconds until a moving rollout's progress deadline passes (None: none pending)."""
    condition = status.condition(C.PROGRESSING)
    if condition is None or condition.status != "True" or not condition.last_update_time:
        return None
    return max(deadline - _elapsed(condition.last_update_time, now), 0.0) + 1.0


def _elapsed(since: str, now: str) -> float:
    return (_instant(now) - _instant(since)).total_seconds()


def _instant(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def transition_events(old: ModelDeploymentStatus, new: ModelDeploymentStatus) -> list[Event]:
    """Events for a phase change to Ready, Degraded or Failed, for a new failure
    message while Degraded, and for a rollout passing its progress deadline."""
    stuck = _newly_stuck(old, new)
    if stuck is not None:
        return [stuck]
    ready, degraded = new.condition(C.READY), new.condition(C.DEGRADED)
    if new.phase != old.phase:
        if new.phase is Phase.READY and ready is not None:
            return [Event(EventType.NORMAL, Reason.ROLLOUT_COMPLETE, ready.message)]
        if new.phase in (Phase.DEGRADED, Phase.FAILED) and degraded is not None:
            return [Event(EventType.WARNING, Reason(degraded.reason), degraded.message)]
    before = old.condition(C.DEGRADED)
    if (
        degraded is not None
        and degraded.status == "True"
        and (before is None or before.status != "True" or before.message != degraded.message)
    ):
        return [Event(EventType.WARNING, Reason(degraded.reason), degraded.message)]
    return []


def _newly_stuck(old: ModelDeploymentStatus, new: ModelDeploymentStatus) -> Event | None:
    deadline = Reason.PROGRESS_DEADLINE_EXCEEDED
    now, before = new.condition(C.PROGRESSING), old.condition(C.PROGRESSING)
    if now is None or now.reason != deadline or (before is not None and before.reason == deadline):
        return None
    return Event(EventType.WARNING, deadline, now.message)


PodMemory = dict[str, tuple[int | None, str | None, str, int | None]]


def _remember(report: PodReport) -> tuple[int | None, str | None, str, int | None]:
    return (report.revision, report.sha256, report.state.value, report.target_revision)


def _swap_event(pod: str, report: PodReport, first: bool) -> Event | None:
    if report.state is PodState.FAILED:
        cause = clip(report.message) or "no reason given"
        return Event(
            EventType.WARNING,
            Reason.SWAP_FAILED,
            f"pod {pod} failed revision "
            f"{report.target_revision}: {cause} (serving revision {report.revision})",
        )
    if report.state is not PodState.SERVING or report.revision is None:
        return None
    took = sum(report.swap_seconds.values())
    phases = ", ".join(f"{k} {v:.2f}s" for k, v in report.swap_seconds.items())
    detail = f" in {took:.2f}s ({phases})" if phases else ""
    verb = "loaded" if first else "swapped to"
    sha = short_sha(report.sha256 or "")
    return Event(
        EventType.NORMAL,
        Reason.LOADED if first else Reason.SWAPPED,
        f"pod {pod} {verb} revision {report.revision} (sha256 {sha}){detail}",
    )


def pod_events(
    memory: PodMemory | None, reports: Mapping[str, PodReport | str]
) -> tuple[list[Event], PodMemory]:
    """Per-pod swap and failure events since `memory` (None: first sight, no events):
    one each for up to MAX_FAILURES pods, then one Event for the rest, so a sync posts
    a bounded number of Events however many pods swapped since the last one."""
    seen: PodMemory = {}
    events: list[Event] = []
    for pod in sorted(reports):
        report = reports[pod]
        if not isinstance(report, PodReport):
            continue
        seen[pod] = _remember(report)
        if memory is None or memory.get(pod) == seen[pod]:
            continue
        first = pod not in memory or memory[pod][0] is None
        event = _swap_event(pod, report, first)
        if event is not None:
            events.append(event)
    return _bounded(events), seen


def _bounded(events: list[Event]) -> list[Event]:
    if len(events) <= MAX_FAILURES:
        return events
    rest = events[MAX_FAILURES - 1 :]
    failed = sum(e.reason is Reason.SWAP_FAILED for e in rest)
    counts = f"{len(rest) - failed} loaded or swapped, {failed} failed"
    message = (
        f"and {len(rest)} more pods: {counts} "
        "(kubectl get modelreplicas -l hotswap.dev/model-deployment=<name>)"
    )
    kind, reason = (EventType.NORMAL, Reason.SWAPPED)
    if failed:
        kind, reason = (EventType.WARNING, Reason.SWAP_FAILED)
    return [*events[: MAX_FAILURES - 1], Event(kind, reason, message)]
