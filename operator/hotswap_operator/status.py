"""The ModelDeployment's status as typed values (the CRD's status schema in pydantic).

`ModelDeploymentStatus.from_raw` reads what the API server holds (tolerating fields a
newer operator wrote, and dropping a malformed field rather than the whole status);
`merge_patch` turns the status a sync wants into the one JSON merge patch it writes:
only what differs, `null` for what goes. The pods' own reports (contract.PodReport) are
not in the status: each pod writes its own ModelReplica object, and the status carries
only what they add up to (counts, phase, conditions, at most MAX_FAILURES failing pods).
A `status.pods` map left by an older version is removed by the next write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hotswap_contract.wire import EvaluationFigures, PodReport, ShadowFigures
from hotswap_operator.reasons import ConditionType, Phase, Reason


class _Status(BaseModel):
    # Unknown fields (a newer operator's) are ignored, not refused.
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    def to_raw(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class RevisionRecord(_Status):
    """`status.stable`, `.candidate` and each `.history[]` entry."""

    revision: int
    uri: str = ""
    sha256: str = ""
    digest: str = ""  # spec.DeploymentSpec.content_digest() of the revision
    created_at: str | None = Field(default=None, alias="createdAt")

    @property
    def key(self) -> tuple[int, str]:
        return (self.revision, self.sha256)


Verdict = Literal["Passed", "Failed", "Inconclusive"]


class CheckResult(_Status):
    """One check of a bake window (checks.py): its verdict, the figures, the sentence."""

    metric: str
    result: Verdict
    canary: float | None = None  # the candidate's figure (ratio, ms or agreement)
    stable: float | None = None  # the stable pods' figure it was compared with
    message: str = ""


class CanaryState(_Status):
    """`status.canary`: where the Canary rollout of the candidate stands."""

    revision: int
    step: int = 1  # 1-based index into `steps`
    steps: tuple[int, ...] = ()  # pods on the candidate at each step
    step_started_at: str = Field(default="", alias="stepStartedAt")
    paused: bool = False
    halted: str = ""  # why the rollout stopped (autoRollback false); empty while going
    # the bake: when the step's pods all served the candidate ("" while not baking)
    bake_started_at: str = Field(default="", alias="bakeStartedAt")
    windows: int = 0  # bake windows this step has run (an inconclusive one runs again)
    checks: tuple[CheckResult, ...] = ()  # the last judged window's results
    checked_step: int = Field(default=0, alias="checkedStep")  # the step they judged


class Rollback(RevisionRecord):
    """`status.rollback`: the candidate last rolled back, which pod failed it and why."""

    stable: int  # the revision rolled back to
    pod: str = ""
    reason: str = ""
    rolled_back_at: str = Field(default="", alias="rolledBackAt")
    checks: tuple[CheckResult, ...] = ()  # the bake window's results when a check failed


class PodFailure(_Status):
    """One entry of `status.failures`: a pod that failed the revision meant for it."""

    pod: str
    revision: int | None = None  # the revision it failed
    reason: str = ""


MAX_FAILURES = 10  # `status.failures` names at most this many pods (failedReplicas counts all)


class Condition(_Status):
    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = Field(default=None, alias="lastTransitionTime")
    # Progressing only: when the rollout last moved (progressDeadlineSeconds counts from it)
    last_update_time: str | None = Field(default=None, alias="lastUpdateTime")
    observed_generation: int | None = Field(default=None, alias="observedGeneration")


@dataclass(frozen=True)
class ConditionValue:
    """A condition as a sync decides it; `set_condition` stamps the times."""

    type: ConditionType
    status: bool
    reason: Reason
    message: str
    last_update: str | None = None  # Progressing: when the rollout last moved


class AnalysisStatus(_Status):
    """The worst figures the pods report judging one revision (analysis.py)."""

    revision: int
    pods: int  # pods that reported figures for it
    evaluation: EvaluationFigures | None = None
    evaluation_pod: str | None = Field(default=None, alias="evaluationPod")
    shadow: ShadowFigures | None = None
    shadow_pod: str | None = Field(default=None, alias="shadowPod")


class ModelDeploymentStatus(_Status):
    """Everything under `status`. None means absent (removed by a merge patch)."""

    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    phase: Phase | None = None
    error: str | None = None  # why the spec cannot run (phase Failed)
    # printer columns
    revision: int | None = None  # the stable revision
    serving: str | None = None  # "2" / "2,3": what the ready pods answer with (summary.py)
    updated: str | None = None  # "2/3": pods serving the stable revision / desired
    ready: str | None = None  # "3/3": ready pods / desired
    checkpoint: str | None = None  # short sha256 of the stable checkpoint
    url: str | None = None  # the Service's in-cluster URL
    message: str | None = None  # what holds the rollout back, one line (summary.py)
    # counts (and the scale subresource's selector)
    replicas: int | None = None
    selector: str | None = None
    ready_replicas: int | None = Field(default=None, alias="readyReplicas")
    updated_replicas: int | None = Field(default=None, alias="updatedReplicas")
    failed_replicas: int | None = Field(default=None, alias="failedReplicas")
    failures: tuple[PodFailure, ...] | None = None  # the first MAX_FAILURES, by pod name
    # the rollout: what model.json says and why
    config_generation: int | None = Field(default=None, alias="configGeneration")
    stable: RevisionRecord | None = None
    candidate: RevisionRecord | None = None
    candidate_pods: tuple[str, ...] | None = Field(default=None, alias="candidatePods")
    canary: CanaryState | None = None
    rollback: Rollback | None = None
    history: tuple[RevisionRecord, ...] | None = None  # last HISTORY_LIMIT, oldest first
    analysis: AnalysisStatus | None = None  # what judging the newest revision found
    # the live pods' own reports, from their ModelReplica objects (SyncContext.build);
    # raw, so an entry that does not parse is reported, not dropped. Never written.
    pods: dict[str, Any] = Field(default_factory=dict, exclude=True)
    conditions: tuple[Condition, ...] = ()

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any] | None) -> ModelDeploymentStatus:
        """Parse `status` as stored; a field that does not parse is left out."""
        data = dict(raw or {})
        for _ in range(len(data) + 1):
            try:
                return cls.model_validate(data)
            except ValidationError as exc:
                bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
                if not bad & set(data):
                    raise
                for key in bad:
                    data.pop(key, None)
        return cls()

    def reports(self) -> dict[str, PodReport | str]:
        """The pods' reports parsed; one that does not parse maps to the reason why."""
        out: dict[str, PodReport | str] = {}
        for pod, entry in self.pods.items():
            try:
                out[pod] = PodReport.model_validate(entry)
            except ValidationError as exc:
                out[pod] = f"unreadable report: {exc.errors()[0]['msg']}"
        return out

    def condition(self, kind: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)


def set_condition(
    status: ModelDeploymentStatus, value: ConditionValue, now: str, generation: int
) -> ModelDeploymentStatus:
    """`status` with its condition of `value.type` set to `value`, last in the list
    (argo-rollouts' SetRolloutCondition): lastTransitionTime stays when the status does
    not change, else it is `now`."""
    flag: Literal["True", "False"] = "True" if value.status else "False"
    before = status.condition(value.type)
    since = before.last_transition_time if before is not None and before.status == flag else None
    condition = Condition(
        type=value.type,
        status=flag,
        reason=value.reason,
        message=value.message,
        lastTransitionTime=since or now,
        lastUpdateTime=value.last_update,
        observedGeneration=generation,
    )
    others = tuple(c for c in status.conditions if c.type != value.type)
    return status.model_copy(update={"conditions": (*others, condition)})


OWNED_FIELDS = tuple(
    (f.alias or name) for name, f in ModelDeploymentStatus.model_fields.items() if name != "pods"
)


def merge_patch(old: Mapping[str, Any], new: ModelDeploymentStatus) -> dict[str, Any]:
    """The JSON merge patch taking the stored status `old` to `new`: the operator's
    fields that differ (None deletes), and a null for an older version's `pods` map."""
    wanted = new.to_raw()
    patch = {k: wanted.get(k) for k in OWNED_FIELDS if old.get(k) != wanted.get(k)}
    if "pods" in old:
        patch["pods"] = None
    return patch
