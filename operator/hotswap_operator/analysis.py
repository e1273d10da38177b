"""What the pods found judging a revision, added up for `status.analysis` (pure).

Each pod reports its own figures (docs/analysis.md); status shows the revision being
judged (the candidate of a Canary, else the stable one), how many pods reported figures
for it, and the worst of them: the lowest accuracy on the evaluation set, and the shadow
comparison that failed or, failing none, the one with the highest disagreement rate.
"""

from __future__ import annotations

from collections.abc import Mapping

from hotswap_contract.wire import EvaluationFigures, PodReport, ShadowFigures
from hotswap_operator.status import AnalysisStatus, ModelDeploymentStatus


def judged_revision(status: ModelDeploymentStatus) -> int | None:
    """The revision being judged: a Canary's candidate, else the stable one."""
    if status.candidate is not None:
        return status.candidate.revision
    return status.stable.revision if status.stable is not None else None


def summarize(status: ModelDeploymentStatus) -> AnalysisStatus | None:
    revision = judged_revision(status)
    if revision is None:
        return None
    evaluations: dict[str, EvaluationFigures] = {}
    shadows: dict[str, ShadowFigures] = {}
    for pod, report in _reports(status).items():
        found = report.analysis
        if found is not None and found.evaluation and found.evaluation.revision == revision:
            evaluations[pod] = found.evaluation
        if found is not None and found.shadow and found.shadow.revision == revision:
            shadows[pod] = found.shadow
    if not evaluations and not shadows:
        return None
    worst_eval = min(evaluations, key=lambda p: (evaluations[p].accuracy, p), default=None)
    worst_shadow = max(shadows, key=lambda p: _badness(shadows[p], p), default=None)
    return AnalysisStatus(
        revision=revision,
        pods=len(evaluations.keys() | shadows.keys()),
        evaluation=evaluations[worst_eval] if worst_eval else None,
        evaluationPod=worst_eval,
        shadow=shadows[worst_shadow] if worst_shadow else None,
        shadowPod=worst_shadow,
    )


def _badness(figures: ShadowFigures, pod: str) -> tuple[bool, float, str]:
    """Failed first, then the highest rate; ties by name, last name first (max)."""
    return (figures.decision == "Failed", figures.rate, pod)


def _reports(status: ModelDeploymentStatus) -> Mapping[str, PodReport]:
    return {p: r for p, r in status.reports().items() if isinstance(r, PodReport)}
