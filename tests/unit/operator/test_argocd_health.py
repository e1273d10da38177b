"""The chart's Argo CD health check (charts/hotswap/files/argocd-health.lua) run in
gopher-lua as Argo CD runs it (devcluster/luahealth), over status shapes built with the
operator's own status model (what a sync writes: ModelDeploymentStatus.to_raw)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devcluster.cluster import REPO
from hotswap_operator.reasons import ConditionType, Phase, Reason
from hotswap_operator.status import CanaryState, Condition, ModelDeploymentStatus, Rollback

SCRIPT = REPO / "charts" / "hotswap" / "files" / "argocd-health.lua"
DOC = REPO / "docs" / "observability.md"


def progressing(status: str, reason: Reason, message: str = "") -> Condition:
    return Condition(type=ConditionType.PROGRESSING, status=status, reason=reason, message=message)


def canary(**fields: Any) -> CanaryState:
    return CanaryState(revision=4, step=2, steps=(1, 2, 3), **fields)


CASES: list[tuple[str, ModelDeploymentStatus | None, int, str, str]] = [
    ("no status yet", None, 1, "Progressing", "Waiting for the operator to report status"),
    (
        "spec changed, not yet observed",
        ModelDeploymentStatus(observedGeneration=1, phase=Phase.READY, revision=3),
        2,
        "Progressing",
        "Waiting for the operator to observe generation 2",
    ),
    (
        "ready",
        ModelDeploymentStatus(observedGeneration=2, phase=Phase.READY, revision=3, ready="3/3"),
        2,
        "Healthy",
        "Revision 3 serving on 3/3 pods",
    ),
    (
        "pods starting",
        ModelDeploymentStatus(
            observedGeneration=1,
            phase=Phase.PENDING,
            conditions=(progressing("True", Reason.PODS_STARTING, "0 of 3 pods serve"),),
        ),
        1,
        "Progressing",
        "0 of 3 pods serve",
    ),
    (
        "rolling out",
        ModelDeploymentStatus(
            observedGeneration=1, phase=Phase.PROGRESSING, message="1 of 3 pods updated"
        ),
        1,
        "Progressing",
        "1 of 3 pods updated",
    ),
    (
        "stuck past the progress deadline",
        ModelDeploymentStatus(
            observedGeneration=1,
            phase=Phase.PROGRESSING,
            conditions=(
                progressing("False", Reason.PROGRESS_DEADLINE_EXCEEDED, "no progress for 600s"),
            ),
        ),
        1,
        "Degraded",
        "no progress for 600s",
    ),
    (
        "a pod failed the stable revision",
        ModelDeploymentStatus(
            observedGeneration=1,
            phase=Phase.DEGRADED,
            message="pod a failed revision 3: sha256 mismatch (still serving revision 2)",
        ),
        1,
        "Degraded",
        "pod a failed revision 3: sha256 mismatch (still serving revision 2)",
    ),
    (
        "spec cannot run",
        ModelDeploymentStatus(
            observedGeneration=1, phase=Phase.FAILED, error="spec.replicas: must be >= 0"
        ),
        1,
        "Degraded",
        "spec.replicas: must be >= 0",
    ),
    (
        "canary rolled back",
        ModelDeploymentStatus(
            observedGeneration=1,
            phase=Phase.ROLLED_BACK,
            rollback=Rollback(revision=4, stable=3, pod="a", reason="error ratio 0.2 > 0.05"),
            message="revision 4 rolled back to 3: error ratio 0.2 > 0.05",
        ),
        1,
        "Degraded",
        "revision 4 rolled back to 3: error ratio 0.2 > 0.05",
    ),
    (
        "canary step running",
        ModelDeploymentStatus(observedGeneration=1, phase=Phase.PROGRESSING, canary=canary()),
        1,
        "Progressing",
        "Canary of revision 4 at step 2",
    ),
    (
        "canary paused",
        ModelDeploymentStatus(
            observedGeneration=1, phase=Phase.PROGRESSING, canary=canary(paused=True)
        ),
        1,
        "Suspended",
        "Canary of revision 4 at step 2 paused",
    ),
    (
        "canary halted",
        ModelDeploymentStatus(
            observedGeneration=1,
            phase=Phase.PROGRESSING,
            canary=canary(halted="p99 latency 0.4s > 0.2s"),
        ),
        1,
        "Degraded",
        "Canary of revision 4 at step 2 halted: p99 latency 0.4s > 0.2s",
    ),
]


def run_health(binary: Path, script: Path, objects: list[dict[str, Any]]) -> list[dict[str, str]]:
    lines = "".join(json.dumps(o) + "\n" for o in objects)
    done = subprocess.run(
        [str(binary), str(script)], input=lines, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def model_deployment(status: ModelDeploymentStatus | None, generation: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "hotswap.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "resnet", "namespace": "ml", "generation": generation},
        "spec": {},
    }
    if status is not None:
        body["status"] = status.to_raw()
    return body


def test_each_status_case_has_its_health(luahealth_bin: Path) -> None:
    objects = [model_deployment(status, gen) for _, status, gen, _, _ in CASES]
    got = run_health(luahealth_bin, SCRIPT, objects)
    want = [{"status": s, "message": m} for _, _, _, s, m in CASES]
    assert [(c[0], g) for c, g in zip(CASES, got, strict=True)] == [
        (c[0], w) for c, w in zip(CASES, want, strict=True)
    ]


@pytest.mark.parametrize("garbage", [{"status": {"phase": 7, "conditions": "x"}}, {"status": []}])
def test_a_status_of_the_wrong_shape_does_not_break_the_script(
    luahealth_bin: Path, garbage: dict[str, Any]
) -> None:
    """Argo CD shows a script error as health Unknown for every object of the kind."""
    (got,) = run_health(luahealth_bin, SCRIPT, [{"metadata": {}, **garbage}])
    assert "error" not in got and got["status"] in {"Progressing", "Degraded"}, got


def test_the_docs_ship_the_same_script() -> None:
    """docs/observability.md's argocd-cm snippet carries the chart's file, line for line."""
    doc = DOC.read_text()
    body = "\n".join("    " + line if line else "" for line in SCRIPT.read_text().splitlines())
    assert body in doc
