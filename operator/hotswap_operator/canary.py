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
equal to stable again cancels it. The step state lives in `status.canary`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from hotswap_runtime.contract import ModelConfig, PodReport, PodState, Revision, short_sha
from pydantic import ValidationError

from hotswap_operator.rollout import (
    HISTORY_LIMIT,
    Event,
    Plan,
    RevisionRef,
    config_generation,
    plan_all_at_once,
    revision_from_spec,
)
from hotswap_operator.spec import DeploymentSpec

DEFAULT_STEPS: tuple[int | str, ...] = (1, "50%", "100%")
STATUS_KEYS = ("canary", "rollback")


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
class CanaryState:
    """`status.canary`: where the rollout of `revision` stands."""

    revision: int
    step: int  # 1-based index into `steps`
    steps: tuple[int, ...]
    step_started_at: str
    paused: bool = False
    halted: str = ""  # why the rollout stopped (autoRollback false); empty while going

    def to_status(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "step": self.step,
            "steps": list(self.steps),
            "stepStartedAt": self.step_started_at,
            "paused": self.paused,
            "halted": self.halted,
        }

    @classmethod
    def from_status(cls, raw: Mapping[str, Any] | None) -> CanaryState | None:
        if not raw or "revision" not in raw:
            return None
        return cls(
            revision=int(raw["revision"]),
            step=int(raw.get("step") or 1),
            steps=tuple(int(s) for s in raw.get("steps") or ()),
            step_started_at=str(raw.get("stepStartedAt") or ""),
            paused=bool(raw.get("paused")),
            halted=str(raw.get("halted") or ""),
        )


@dataclass(frozen=True)
class Rollout:
    """Everything one evaluation looks at."""

    name: str
    spec: DeploymentSpec
    status: Mapping[str, Any]
    current: ModelConfig | None
    now: str
    pods: tuple[str, ...]

    @property
    def digest(self) -> str:
        return self.spec.content_digest()


def plan_canary(
    name: str,
    spec: DeploymentSpec,
    status: Mapping[str, Any],
    current: ModelConfig | None,
    now: str,
    pods: Sequence[str] = (),
) -> Plan:
    """The ConfigMap and status fields for a Canary ModelDeployment right now."""
    r = Rollout(name, spec, status, current, now, tuple(sorted(pods)))
    stable = RevisionRef.from_status(status.get("stable"))
    if stable is None:  # nothing to compare a canary against: the first revision is stable
        return _with(plan_all_at_once(name, spec, status, current, now), canary=None)
    if r.digest == stable.digest:
        return _settled(r, stable, rollback=None, events=[])
    rollback = status.get("rollback") or {}
    if rollback.get("digest") == r.digest:  # the spec still names what was rolled back
        return _settled(r, stable, rollback=dict(rollback), events=[])
    candidate = RevisionRef.from_status(status.get("candidate"))
    state = CanaryState.from_status(status.get("canary"))
    if candidate is None or candidate.digest != r.digest or state is None:
        return _start(r, stable)
    return _progress(r, stable, candidate, state)


# ---- the stable revision and the settled plan ---------------------------------------


def _stable_revision(r: Rollout, stable: RevisionRef) -> Revision:
    """The full stable revision: from the ConfigMap (which carries model and validation)."""
    if r.current is not None and r.current.stable.key == (stable.revision, stable.sha256):
        return r.current.stable
    checkpoint = r.spec.checkpoint.to_contract().model_copy(
        update={"uri": stable.uri, "sha256": stable.sha256}
    )
    return Revision(revision=stable.revision, model=r.spec.model, checkpoint=checkpoint)


def _config(
    r: Rollout, stable: Revision, candidate: Revision | None, pods: Sequence[str]
) -> ModelConfig:
    desired = ModelConfig(
        name=r.name,
        generation=0,
        stable=stable,
        candidate=candidate,
        candidatePods=tuple(pods) if candidate is not None else (),
    )
    return desired.model_copy(
        update={"generation": config_generation(desired, r.current, r.status)}
    )


def _settled(
    r: Rollout, stable: RevisionRef, rollback: dict[str, Any] | None, events: list[Event]
) -> Plan:
    """No rollout in progress: every pod serves stable."""
    config = _config(r, _stable_revision(r, stable), None, ())
    fields: dict[str, Any] = {
        "stable": stable.to_status(),
        "candidate": None,
        "candidatePods": None,
        "canary": None,
        "rollback": rollback,
        "revision": stable.revision,
        "checkpoint": short_sha(stable.sha256),
        "configGeneration": config.generation,
        "history": r.status.get("history") or [stable.to_status()],
    }
    return Plan(config=config, status=fields, events=events)


def _with(plan: Plan, **fields: Any) -> Plan:
    return replace(plan, status={**plan.status, **fields, "rollback": None})


# ---- starting a candidate -----------------------------------------------------------


def _known(r: Rollout) -> list[int]:
    refs = [r.status.get("stable"), r.status.get("candidate"), r.status.get("rollback")]
    refs += list(r.status.get("history") or ())
    numbers = [int(ref["revision"]) for ref in refs if ref and "revision" in ref]
    if r.current is not None:
        numbers.append(r.current.stable.revision)
        if r.current.candidate is not None:
            numbers.append(r.current.candidate.revision)
    return numbers


def _candidate_number(r: Rollout) -> int:
    # Status may lag the ConfigMap (a crash between the two writes): adopt its number.
    written = r.current.candidate if r.current is not None else None
    if written is not None and _same_content(written, revision_from_spec(r.spec, 1)):
        return written.revision
    return max(_known(r), default=0) + 1


def _same_content(a: Revision, b: Revision) -> bool:
    return a.model_copy(update={"revision": 0}) == b.model_copy(update={"revision": 0})


def _start(r: Rollout, stable: RevisionRef) -> Plan:
    number = _candidate_number(r)
    ref = RevisionRef(
        revision=number,
        uri=r.spec.checkpoint.uri,
        sha256=r.spec.checkpoint.sha256,
        digest=r.digest,
        created_at=r.now,
    )
    steps = step_counts(r.spec.rollout.steps, r.spec.replicas)
    state = CanaryState(number, 1, steps, r.now, paused=r.spec.rollout.paused)
    previous = tuple(r.status.get("candidatePods") or ())
    named = choose(r.pods, previous, steps[0])
    history = [h for h in r.status.get("history") or () if h.get("revision") != number]
    plan = _running(r, stable, ref, state, named)
    event = Event(
        "Normal",
        "RevisionCreated",
        f"revision {number}: {ref.uri} (sha256 {short_sha(ref.sha256)}), canary step 1 of "
        f"{len(steps)} on {_names(named)}; the other pods keep revision {stable.revision}",
    )
    fields = {**plan.status, "history": [*history, ref.to_status()][-HISTORY_LIMIT:]}
    return Plan(config=plan.config, status=fields, events=[event])


def choose(pods: Sequence[str], named: Sequence[str], count: int) -> tuple[str, ...]:
    """`count` live pods: those already named first, then others by name."""
    live = sorted(pods)
    keep = [p for p in named if p in live][:count]
    extra = [p for p in live if p not in keep][: max(count - len(keep), 0)]
    return tuple(sorted(keep + extra))


def _running(
    r: Rollout, stable: RevisionRef, ref: RevisionRef, state: CanaryState, named: Sequence[str]
) -> Plan:
    candidate = revision_from_spec(r.spec, ref.revision)
    config = _config(r, _stable_revision(r, stable), candidate, named)
    fields: dict[str, Any] = {
        "stable": stable.to_status(),
        "candidate": ref.to_status(),
        "candidatePods": list(named),
        "canary": state.to_status(),
        "rollback": None,
        "revision": stable.revision,
        "checkpoint": short_sha(stable.sha256),
        "configGeneration": config.generation,
    }
    return Plan(config=config, status=fields, events=[])


# ---- progressing --------------------------------------------------------------------


def _progress(r: Rollout, stable: RevisionRef, ref: RevisionRef, state: CanaryState) -> Plan:
    named = choose(r.pods, tuple(r.status.get("candidatePods") or ()), state.steps[state.step - 1])
    if state.halted:
        return _running(r, stable, ref, state, named)
    reports = _reports(r.status.get("pods"))
    failure = _failure(named, reports, ref)
    if failure is None and not r.spec.rollout.paused:
        failure = _timed_out(r, state, named, reports, ref)
    if failure is not None:
        return _fail(r, stable, ref, state, named, failure)
    if r.spec.rollout.paused:
        return _running(r, stable, ref, replace(state, paused=True), named)
    if state.paused:  # resumed: the step clock starts again
        state = replace(state, paused=False, step_started_at=r.now)
    if not _step_done(named, reports, ref, state):
        return _running(r, stable, ref, state, named)
    if state.step == len(state.steps):
        return _promote(r, ref, named)
    return _advance(r, stable, ref, state, named)


def _reports(raw: Mapping[str, Any] | None) -> dict[str, PodReport]:
    out = {}
    for pod, entry in (raw or {}).items():
        try:
            out[pod] = PodReport.model_validate(entry)
        except ValidationError:
            continue  # status.py reports unreadable entries
    return out


def _serves(report: PodReport | None, ref: RevisionRef) -> bool:
    return (
        report is not None
        and report.state is PodState.SERVING
        and (report.revision, report.sha256) == (ref.revision, ref.sha256)
    )


def _failure(
    named: Sequence[str], reports: Mapping[str, PodReport], ref: RevisionRef
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


def _seconds_between(start: str, end: str) -> float:
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except ValueError:
        return 0.0


def _timed_out(
    r: Rollout,
    state: CanaryState,
    named: Sequence[str],
    reports: Mapping[str, PodReport],
    ref: RevisionRef,
) -> tuple[str, str] | None:
    limit = r.spec.rollout.step_timeout_seconds
    if state.paused or _seconds_between(state.step_started_at, r.now) <= limit:
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
    named: Sequence[str], reports: Mapping[str, PodReport], ref: RevisionRef, state: CanaryState
) -> bool:
    want = state.steps[state.step - 1]
    return len(named) >= want and all(_serves(reports.get(p), ref) for p in named)


def _advance(
    r: Rollout, stable: RevisionRef, ref: RevisionRef, state: CanaryState, named: Sequence[str]
) -> Plan:
    nxt = replace(state, step=state.step + 1, step_started_at=r.now)
    more = choose(r.pods, named, nxt.steps[nxt.step - 1])
    plan = _running(r, stable, ref, nxt, more)
    event = Event(
        "Normal",
        "CanaryStep",
        f"revision {ref.revision}: step {state.step} done, step {nxt.step} of "
        f"{len(nxt.steps)}: {len(more)}/{r.spec.replicas} pods ({_names(more)})",
    )
    return replace(plan, events=[event])


def _promote(r: Rollout, ref: RevisionRef, named: Sequence[str]) -> Plan:
    config = _config(r, revision_from_spec(r.spec, ref.revision), None, ())
    fields: dict[str, Any] = {
        "stable": ref.to_status(),
        "candidate": None,
        "candidatePods": None,
        "canary": None,
        "rollback": None,
        "revision": ref.revision,
        "checkpoint": short_sha(ref.sha256),
        "configGeneration": config.generation,
    }
    event = Event(
        "Normal",
        "Promoted",
        f"revision {ref.revision} promoted to stable: {len(named)} pods serve it "
        f"(sha256 {short_sha(ref.sha256)})",
    )
    return Plan(config=config, status=fields, events=[event])


def _fail(
    r: Rollout,
    stable: RevisionRef,
    ref: RevisionRef,
    state: CanaryState,
    named: Sequence[str],
    failure: tuple[str, str],
) -> Plan:
    pod, why = failure
    if not r.spec.rollout.auto_rollback:
        halted = f"rollout of revision {ref.revision} halted: pod {pod} {why}"
        return _running(r, stable, ref, replace(state, halted=halted), named)
    rollback = {
        **ref.to_status(),
        "stable": stable.revision,
        "pod": pod,
        "reason": why,
        "rolledBackAt": r.now,
    }
    event = Event(
        "Warning",
        "RolledBack",
        f"revision {ref.revision} rolled back to revision {stable.revision}: pod {pod} {why}",
    )
    return _settled(r, stable, rollback=rollback, events=[event])


def _names(pods: Sequence[str]) -> str:
    return ", ".join(pods) if pods else "no pod yet"


# ---- what status.py shows -----------------------------------------------------------


def override(status: Mapping[str, Any], phase: str) -> tuple[str, str, str] | None:
    """(phase, reason, message) replacing the aggregated phase while a Canary rollout
    runs or after it rolled back; None to keep the aggregated one."""
    if phase == "Failed":
        return None
    state = CanaryState.from_status(status.get("canary"))
    candidate = RevisionRef.from_status(status.get("candidate"))
    if candidate is not None and state is not None:
        if state.halted:
            return "Degraded", "RolloutHalted", state.halted
        if phase == "Degraded":
            return None  # the stable revision itself fails somewhere: say that
        named = list(status.get("candidatePods") or ())
        where = (
            f"revision {candidate.revision} on {len(named)} pods ({_names(named)}), "
            f"step {state.step} of {len(state.steps)}"
        )
        if state.paused:
            return "Progressing", "Paused", f"paused at {where}"
        return "Progressing", "CanaryStep", where
    rollback = status.get("rollback")
    if rollback and candidate is None and phase in ("Ready", "Progressing"):
        return (
            "RolledBack",
            "RolledBack",
            f"revision {rollback.get('revision')} rolled back to revision "
            f"{rollback.get('stable')}: pod {rollback.get('pod')} {rollback.get('reason')}",
        )
    return None
