"""Aggregation of runtime pod reports into the ModelDeployment's status (pure).

Runtime pods write `status.pods.<pod>` (contract.PodReport). From those reports and
the live pods, `summarize` computes replica counts, the printable UPDATED / READY
strings, the phase and the Ready / Progressing / Degraded conditions; `status_patch`
turns that into a JSON merge patch holding only what changed, with entries of pods
that no longer exist set to null (pruned).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from hotswap_runtime.contract import PodReport, PodState, short_sha
from hotswap_runtime.redact import clip
from pydantic import ValidationError

from hotswap_operator import canary
from hotswap_operator.rollout import Event, RevisionRef

PENDING, PROGRESSING, READY = "Pending", "Progressing", "Ready"
DEGRADED, FAILED, ROLLED_BACK = "Degraded", "Failed", "RolledBack"
SUMMARY_KEYS = ("replicas", "readyReplicas", "updatedReplicas", "updated", "ready", "phase")


@dataclass(frozen=True)
class PodInfo:
    """What the operator reads of one runtime pod from the API."""

    name: str
    ready: bool
    terminating: bool = False

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> PodInfo:
        conditions = (pod.get("status") or {}).get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        meta = pod.get("metadata") or {}
        return cls(meta["name"], ready, bool(meta.get("deletionTimestamp")))


def read_reports(raw: Mapping[str, Any] | None) -> dict[str, PodReport | str]:
    """Parse status.pods; an entry that does not parse maps to the reason why."""
    reports: dict[str, PodReport | str] = {}
    for pod, entry in (raw or {}).items():
        try:
            reports[pod] = PodReport.model_validate(entry)
        except ValidationError as exc:
            reports[pod] = f"unreadable report: {exc.errors()[0]['msg']}"
    return reports


@dataclass(frozen=True)
class Summary:
    replicas: int
    ready_replicas: int
    updated_replicas: int
    desired: int
    phase: str
    conditions: tuple[tuple[str, bool, str, str], ...]  # (type, status, reason, message)

    def fields(self) -> dict[str, Any]:
        return {
            "replicas": self.replicas,
            "readyReplicas": self.ready_replicas,
            "updatedReplicas": self.updated_replicas,
            "updated": f"{self.updated_replicas}/{self.desired}",
            "ready": f"{self.ready_replicas}/{self.desired}",
            "phase": self.phase,
        }


def _serves(report: PodReport | str | None, stable: RevisionRef) -> bool:
    return (
        isinstance(report, PodReport)
        and report.revision == stable.revision
        and report.sha256 == stable.sha256
    )


def _failure(report: PodReport | str | None, stable: RevisionRef) -> str | None:
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


def _failure_message(failures: Sequence[tuple[str, str]]) -> str:
    """One sentence per distinct cause, naming every pod that has it."""
    by_cause: dict[str, list[str]] = {}
    for pod, why in failures:
        by_cause.setdefault(why, []).append(pod)
    return "; ".join(
        f"{'pod' if len(pods) == 1 else 'pods'} {', '.join(pods)} {why}"
        for why, pods in by_cause.items()
    )


def _waiting(pods: Sequence[PodInfo], reports: Mapping[str, PodReport | str]) -> str:
    parts = []
    for pod in pods:
        report = reports.get(pod.name)
        state = report.state.value if isinstance(report, PodReport) else "no report yet"
        parts.append(f"{pod.name} ({state})")
    return ", ".join(parts)


def _phase(
    desired: int,
    live: Sequence[PodInfo],
    reports: Mapping[str, PodReport | str],
    updated: int,
    failures: Sequence[tuple[str, str]],
) -> str:
    serving_any = any(
        isinstance(r, PodReport) and r.revision is not None
        for r in (reports.get(p.name) for p in live)
    )
    ready = sum(p.ready for p in live)
    if failures:
        return DEGRADED if serving_any else FAILED
    if updated == desired == len(live) and ready == desired:
        return READY
    return PROGRESSING if serving_any else PENDING


def summarize(desired: int, status: Mapping[str, Any], pods: Sequence[PodInfo]) -> Summary:
    """Counts, phase and conditions of a ModelDeployment from its pods' reports."""
    live = [p for p in pods if not p.terminating]
    ready = sum(p.ready for p in live)
    stable = RevisionRef.from_status(status.get("stable"))
    error = str(status.get("error") or "")
    if error or stable is None:
        phase, reason = (FAILED, "InvalidSpec") if error else (PENDING, "NoRevision")
        message = error or "waiting for the operator to write revision 1"
        conditions = (
            ("Ready", False, reason, message),
            ("Progressing", not error, reason, message),
            ("Degraded", bool(error), reason, message),
        )
        return Summary(len(live), ready, 0, desired, phase, conditions)
    reports = read_reports(status.get("pods"))
    updated = sum(_serves(reports.get(p.name), stable) for p in live)
    failures = [(p.name, f) for p in live if (f := _failure(reports.get(p.name), stable))]
    phase = _phase(desired, live, reports, updated, failures)
    target = f"revision {stable.revision} (sha256 {short_sha(stable.sha256)})"
    counts = f"{updated}/{desired} pods serve {target}, {ready}/{desired} ready"
    behind = [p for p in live if not (_serves(reports.get(p.name), stable) and p.ready)]
    waiting = f"{counts}; waiting for {_waiting(behind, reports)}" if behind else counts
    if len(live) != desired:
        waiting = f"{waiting}; {len(live)} of {desired} pods exist"
    failed_msg = _failure_message(failures)
    shown = canary.override(status, phase)  # a Canary rollout says where it stands
    if shown is not None:
        return _canary_summary(
            Summary(len(live), ready, updated, desired, phase, ()), counts, shown
        )
    conditions = (
        ("Ready", phase == READY, _READY_REASONS[phase], counts),
        (
            "Progressing",
            phase in (PENDING, PROGRESSING),
            _PROGRESS_REASONS[phase],
            failed_msg or waiting if phase != READY else counts,
        ),
        (
            "Degraded",
            bool(failures),
            _READY_REASONS[phase] if failures else "NoFailures",
            failed_msg or "no pod reports a failure",
        ),
    )
    return Summary(len(live), ready, updated, desired, phase, conditions)


def _canary_summary(base: Summary, counts: str, shown: tuple[str, str, str]) -> Summary:
    phase, reason, message = shown
    conditions = (
        ("Ready", base.phase == READY, _READY_REASONS[base.phase], counts),
        ("Progressing", phase == PROGRESSING, reason, message),
        ("Degraded", phase == DEGRADED, reason if phase == DEGRADED else "NoFailures", message),
    )
    return replace(base, phase=phase, conditions=conditions)


_READY_REASONS = {
    PENDING: "PodsStarting",
    PROGRESSING: "Updating",
    READY: "AllPodsServing",
    DEGRADED: "SwapFailed",
    FAILED: "NoPodServing",
    ROLLED_BACK: "RolledBack",
}
_PROGRESS_REASONS = {
    PENDING: "PodsStarting",
    PROGRESSING: "RollingOut",
    READY: "RolloutComplete",
    DEGRADED: "RolloutStalled",
    FAILED: "RolloutStalled",
    ROLLED_BACK: "RolledBack",
}


def conditions(
    summary: Summary, old: Sequence[Mapping[str, Any]], now: str, generation: int
) -> list[dict[str, Any]]:
    """Condition objects; lastTransitionTime moves only when a status flips."""
    previous = {c.get("type"): c for c in old}
    out = []
    for kind, flag, reason, message in summary.conditions:
        status = "True" if flag else "False"
        before = previous.get(kind) or {}
        since = before.get("lastTransitionTime") if before.get("status") == status else None
        out.append(
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": since or now,
                "observedGeneration": generation,
            }
        )
    return out


def status_patch(
    status: Mapping[str, Any], summary: Summary, pods: Sequence[PodInfo], now: str
) -> dict[str, Any]:
    """A merge patch with only what differs from `status`; {} when nothing does."""
    patch = {k: v for k, v in summary.fields().items() if status.get(k) != v}
    generation = int(status.get("observedGeneration") or 0)
    conds = conditions(summary, status.get("conditions") or [], now, generation)
    if conds != list(status.get("conditions") or []):
        patch["conditions"] = conds
    existing = {p.name for p in pods}
    stale = sorted(set(status.get("pods") or {}) - existing)
    if stale:
        patch["pods"] = dict.fromkeys(stale)
    return patch


def transition_events(status: Mapping[str, Any], patch: Mapping[str, Any]) -> list[Event]:
    """Events for phase changes and new failure messages that `patch` brings."""
    conds = {c["type"]: c for c in patch.get("conditions") or ()}
    phase = patch.get("phase")
    ready, degraded = conds.get("Ready"), conds.get("Degraded")
    if phase == READY and ready:
        return [Event("Normal", "RolloutComplete", ready["message"])]
    if phase in (DEGRADED, FAILED) and degraded:
        return [Event("Warning", degraded["reason"], degraded["message"])]
    old = {c.get("type"): c for c in status.get("conditions") or ()}
    old_msg = (old.get("Degraded") or {}).get("message")
    if degraded and degraded["status"] == "True" and degraded["message"] != old_msg:
        return [Event("Warning", degraded["reason"], degraded["message"])]
    return []


PodMemory = dict[str, tuple[int | None, str | None, str, int | None]]


def _remember(report: PodReport) -> tuple[int | None, str | None, str, int | None]:
    return (report.revision, report.sha256, report.state.value, report.target_revision)


def _swap_event(pod: str, report: PodReport, first: bool) -> Event | None:
    if report.state is PodState.FAILED:
        cause = clip(report.message) or "no reason given"
        return Event(
            "Warning",
            "SwapFailed",
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
        "Normal",
        "Loaded" if first else "Swapped",
        f"pod {pod} {verb} revision {report.revision} (sha256 {sha}){detail}",
    )


def pod_events(
    memory: PodMemory | None, raw: Mapping[str, Any] | None
) -> tuple[list[Event], PodMemory]:
    """Per-pod swap and failure events since `memory` (None: first sight, no events)."""
    seen: PodMemory = {}
    events: list[Event] = []
    for pod, report in read_reports(raw).items():
        if not isinstance(report, PodReport):
            continue
        seen[pod] = _remember(report)
        if memory is None or memory.get(pod) == seen[pod]:
            continue
        first = pod not in memory or memory[pod][0] is None
        event = _swap_event(pod, report, first)
        if event is not None:
            events.append(event)
    return events, seen
