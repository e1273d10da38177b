"""Every named value status and Events carry: phases, condition types, reasons.

One place, so printer columns, conditions, Events, metrics and tests agree on the
spelling (argo-rollouts keeps its reasons in utils/conditions the same way). `Event` is
the value the planners and the aggregation return; `events.py` posts it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Phase(enum.StrEnum):
    """`status.phase` (the CRD's enum)."""

    PENDING = "Pending"  # no pod serves yet
    PROGRESSING = "Progressing"  # pods are taking the stable revision, or a canary runs
    READY = "Ready"  # every desired pod serves the stable revision and is ready
    DEGRADED = "Degraded"  # a pod failed the stable revision and serves an older one
    FAILED = "Failed"  # nothing serves, or the spec cannot run
    ROLLED_BACK = "RolledBack"  # a Canary candidate was rolled back


class ConditionType(enum.StrEnum):
    AVAILABLE = "Available"  # enough pods serve some revision: traffic is answered
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"


class Reason(enum.StrEnum):
    """Reasons of conditions and of Events (an Event's reason is one of these too)."""

    # conditions: what the pods' reports add up to
    PODS_STARTING = "PodsStarting"
    UPDATING = "Updating"
    ALL_PODS_SERVING = "AllPodsServing"
    SWAP_FAILED = "SwapFailed"
    NO_POD_SERVING = "NoPodServing"
    ROLLING_OUT = "RollingOut"
    ROLLOUT_COMPLETE = "RolloutComplete"
    ROLLOUT_STALLED = "RolloutStalled"
    NO_FAILURES = "NoFailures"
    NO_REVISION = "NoRevision"
    MINIMUM_PODS_SERVING = "MinimumPodsServing"  # Available True
    TOO_FEW_PODS_SERVING = "TooFewPodsServing"  # Available False
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"  # Progressing False: stuck
    INVALID_SPEC = "InvalidSpec"
    # Canary rollouts
    CANARY_STEP = "CanaryStep"
    PAUSED = "Paused"
    ROLLOUT_HALTED = "RolloutHalted"
    ROLLED_BACK = "RolledBack"
    BAKING = "Baking"  # the step's pods serve the candidate; its bake window runs
    # Canary analysis and commands (Events)
    ANALYSIS_PASSED = "AnalysisPassed"
    ANALYSIS_FAILED = "AnalysisFailed"
    ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"
    STEP_PROMOTED = "StepPromoted"
    ABORTED = "Aborted"
    RETRIED = "Retried"
    # Events only
    REVISION_CREATED = "RevisionCreated"
    PROMOTED = "Promoted"
    LOADED = "Loaded"
    SWAPPED = "Swapped"


class EventType(enum.StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the ModelDeployment."""

    type: EventType
    reason: Reason
    message: str
