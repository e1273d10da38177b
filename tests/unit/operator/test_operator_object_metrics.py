"""Per-ModelDeployment series (object_metrics.py), read back through the exposition
format Prometheus scrapes."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hotswap_operator.metrics import Metrics
from hotswap_operator.object_metrics import object_state
from hotswap_operator.reasons import Phase
from hotswap_operator.status import CanaryState, ModelDeploymentStatus, RevisionRecord


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("hotswap_modeldeployment_")
    }


def canary_status() -> ModelDeploymentStatus:
    return ModelDeploymentStatus(
        phase=Phase.PROGRESSING,
        serving="2,3",
        stable=RevisionRecord(revision=2),
        candidate=RevisionRecord(revision=3),
        canary=CanaryState(revision=3, step=2, steps=(1, 2, 4), paused=True),
        replicas=4,
        readyReplicas=4,
        updatedReplicas=2,
    )


def test_one_info_series_per_object_and_the_canary_step() -> None:
    metrics = Metrics()
    metrics.objects.set(("ml", "resnet"), object_state(canary_status()))
    got = samples(metrics)
    info = (
        ("latest", "3"),
        ("name", "resnet"),
        ("namespace", "ml"),
        ("phase", "Progressing"),
        ("serving", "2,3"),
        ("stable", "2"),
    )
    assert got[("hotswap_modeldeployment_info", info)] == 1
    where = (("name", "resnet"), ("namespace", "ml"), ("revision", "3"))
    assert got[("hotswap_modeldeployment_canary_step", where)] == 2
    assert got[("hotswap_modeldeployment_canary_steps", where)] == 3
    assert got[("hotswap_modeldeployment_canary_pods", where)] == 2
    assert got[("hotswap_modeldeployment_canary_paused", where)] == 1
    replicas = {k[1][-1][1]: v for k, v in got.items() if k[0].endswith("_replicas")}
    assert replicas == {"current": 4, "ready": 4, "updated": 2, "failed": 0}


def test_a_phase_change_replaces_the_series_and_a_deletion_drops_them() -> None:
    metrics = Metrics()
    key = ("ml", "resnet")
    metrics.objects.set(key, object_state(canary_status()))
    done = ModelDeploymentStatus(phase=Phase.READY, serving="3", stable=RevisionRecord(revision=3))
    metrics.objects.set(key, object_state(done))
    infos = [dict(k[1]) for k in samples(metrics) if k[0] == "hotswap_modeldeployment_info"]
    assert [(i["phase"], i["latest"]) for i in infos] == [("Ready", "3")]
    assert not [k for k in samples(metrics) if "canary" in k[0]]
    metrics.objects.drop(key)
    assert samples(metrics) == {}
