"""Sample ModelDeployment bodies for the operator's unit tests."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from hotswap_contract.wire import ModelConfig
from hotswap_operator.config import RuntimeDefaults
from hotswap_operator.context import PodInfo, SyncContext
from hotswap_operator.resources import Owner
from hotswap_operator.status import ModelDeploymentStatus

SHA_A = "a" * 64
SHA_B = "b" * 64

SPEC: dict[str, Any] = {
    "replicas": 3,
    "model": {
        "architecture": "torchvision/resnet18",
        "args": {"num_classes": 10},
        "inputShape": [3, 32, 32],
    },
    "checkpoint": {"uri": "file:///models/v1.safetensors", "sha256": SHA_A},
    "rollout": {"strategy": "AllAtOnce"},
    "runtime": {"device": "cpu"},
}


def body(
    spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None, generation: int = 1
) -> dict[str, Any]:
    return {
        "apiVersion": "hotswap.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {
            "name": "resnet",
            "namespace": "ml",
            "uid": "uid-1",
            "generation": generation,
            "resourceVersion": "1",
        },
        "spec": copy.deepcopy(spec if spec is not None else SPEC),
        "status": copy.deepcopy(status or {}),
    }


def with_checkpoint(uri: str, sha256: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    out = copy.deepcopy(spec if spec is not None else SPEC)
    out["checkpoint"] = {"uri": uri, "sha256": sha256}
    return out


def report(
    revision: int | None,
    sha256: str | None,
    state: str = "Serving",
    target: int | None = None,
    message: str = "",
) -> dict[str, Any]:
    entry: dict[str, Any] = {"state": state, "message": message}
    if revision is not None:
        entry["revision"] = revision
        entry["sha256"] = sha256
    if target is not None:
        entry["targetRevision"] = target
    return entry


def with_reports(status: ModelDeploymentStatus, pods: dict[str, Any]) -> ModelDeploymentStatus:
    """`status` with the pods' own reports (their ModelReplicas, as a sync sees them)
    replaced by `pods`."""
    return status.model_copy(update={"pods": pods})


def typed(raw: dict[str, Any]) -> ModelDeploymentStatus:
    return ModelDeploymentStatus.from_raw(raw)


def sync_context(
    status: ModelDeploymentStatus | None = None,
    config: ModelConfig | None = None,
    now: str = "2026-01-01T00:00:00Z",
    pods: Sequence[str] = (),
    name: str = "resnet",
) -> SyncContext:
    """What a sync of ModelDeployment `name` would read: `status` (the pods' reports in
    its `pods`), `config` as model.json and the live, ready runtime pods `pods`."""
    return SyncContext(
        owner=Owner(name=name, namespace="ml", uid="uid-1"),
        body={},
        resource_version="1",
        generation=1,
        raw_spec={},
        raw_status={},
        status=status or ModelDeploymentStatus(),
        config=config,
        config_uid=None,
        config_holder=None,
        pods=tuple(PodInfo(pod, ready=True) for pod in pods),
        defaults=RuntimeDefaults(),
        now=now,
        children_due=False,
    )
