"""Canary analysis end to end: a step bakes, then a p99 latency check (read from the
runtime pods' /metrics by the operator) aborts a slower candidate and promotes a good
one; kubectl-style commands (annotations) promote and abort.

One 4-replica Canary ModelDeployment of the tiny test model, under client load the
whole time (both sides of each window need requests). The slow candidate is a larger
architecture (devcluster.tiny:make_deep, many times tiny's latency) with its own
weights: a new revision like any other.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from devcluster import checkpoints, tiny
from devcluster.cluster import Cluster
from devcluster.fleet import Fleet, Load, cpu_deployment
from examples.checkpoints import pod_uri
from tests.e2e.test_canary import events, wait_event

NAME = "canary-analysis"
REPLICAS = 4
SHAPE = (tiny.FEATURES,)
BAKE = 20
JSON = dict[str, Any]
CHECKS = [
    {"metric": "p99Latency", "maxRatio": 1.5, "minRequests": 20},
    {"metric": "errorRate", "maxIncrease": 0.01, "minRequests": 20},
]


@pytest.fixture(scope="module")
def files() -> Iterator[dict[str, JSON]]:
    folder = checkpoints.local_folder("canary-analysis")
    out: dict[str, JSON] = {}
    for name, state in (
        ("v1", tiny.weights(1)),
        ("v2", tiny.weights(2)),
        ("v3", tiny.weights(3)),
        ("deep", tiny.deep_weights(5)),
    ):
        path = folder / f"{name}.safetensors"
        out[name] = {"uri": pod_uri(path), "sha256": checkpoints.save(state, path)}
    yield out
    shutil.rmtree(folder, ignore_errors=True)


def rollout(**fields: Any) -> JSON:
    return {
        "strategy": "Canary",
        "steps": [1, "50%", "100%"],
        "stepTimeoutSeconds": 180,
        "bakeSeconds": BAKE,
        "checks": CHECKS,
        **fields,
    }


@pytest.fixture(scope="module")
def fleet(cluster: Cluster, node: Any, installed: str, files: dict[str, JSON]) -> Fleet:
    manifest = cpu_deployment(
        NAME, REPLICAS, tiny.ARCHITECTURE, SHAPE, files["v1"], rollout=rollout()
    )
    return Fleet(cluster, installed, NAME).deploy(manifest, timeout=420)


@pytest.fixture
def load(fleet: Fleet) -> Iterator[Load]:
    with fleet.load(SHAPE, clients=4) as running:
        running.wait_answers(50)
        yield running


def tiny_model() -> JSON:
    return {"architecture": tiny.ARCHITECTURE, "inputShape": list(SHAPE)}


def settle(fleet: Fleet, files: dict[str, JSON]) -> int:
    """The spec back on the tiny model's stable revision (an earlier test may have left
    a candidate or a rollback), phase Ready; returns the stable revision."""
    stable = fleet.status()["stable"]
    back = {k: stable[k] for k in ("uri", "sha256")}
    fleet.patch_spec({"model": tiny_model(), "checkpoint": back, "rollout": rollout()})
    fleet.wait_serving(stable["revision"], REPLICAS, timeout=180)
    return int(stable["revision"])


def newest(fleet: Fleet) -> int:
    return max(int(h["revision"]) for h in fleet.status().get("history") or ())


def all_on(fleet: Fleet, phase: str, revision: int) -> JSON:
    """Every pod serves `revision` and is ready, in `phase` (RolledBack stays until the
    spec changes again)."""
    everyone = f"{REPLICAS}/{REPLICAS}"
    return fleet.wait(
        lambda s: (
            s.get("phase") == phase
            and s.get("revision") == revision
            and s.get("updated") == everyone
            and s.get("ready") == everyone
        ),
        f"every pod on revision {revision}, phase {phase}",
        timeout=120,
    )


def test_a_slower_candidate_fails_its_latency_check_and_rolls_back(fleet: Fleet, load: Load, files):
    stable = settle(fleet, files)
    deep = {"architecture": tiny.DEEP, "inputShape": list(SHAPE)}
    fleet.patch_spec({"model": deep, "checkpoint": files["deep"], "rollout": rollout()})
    st = fleet.wait(
        lambda s: s.get("phase") == "RolledBack" and (s.get("rollback") or {}).get("revision"),
        "the slow candidate rolled back",
        timeout=240,
    )
    rollback = st["rollback"]
    assert rollback["stable"] == stable and rollback["revision"] == stable + 1
    assert rollback["reason"].startswith("check p99Latency: canary p99 "), rollback
    assert "above maxRatio 1.5" in rollback["reason"], rollback
    failed = [c for c in rollback["checks"] if c["result"] == "Failed"]
    assert [c["metric"] for c in failed] == ["p99Latency"], rollback["checks"]
    assert failed[0]["canary"] > 1.5 * failed[0]["stable"], failed
    wait_event(fleet, "AnalysisFailed", f"revision {stable + 1}", "p99Latency")
    wait_event(fleet, "RolledBack", f"revision {stable + 1}", "p99Latency")
    all_on(fleet, "RolledBack", stable)
    assert not load.failures, load.summary()


def test_a_good_candidate_passes_each_bake_and_is_promoted(fleet: Fleet, load: Load, files):
    settle(fleet, files)
    new = newest(fleet) + 1  # a rolled-back revision keeps its number
    fleet.patch_spec({"model": tiny_model(), "checkpoint": files["v2"], "rollout": rollout()})
    final = fleet.wait_serving(new, REPLICAS, timeout=300)
    assert final["stable"]["revision"] == new and "rollback" not in final
    passed = [m for m in events(fleet, "AnalysisPassed") if f"revision {new}" in m]
    assert len(passed) == 2, passed  # steps 1 and 2 baked and passed; step 3 promotes
    assert all("p99Latency" in m and "within maxRatio 1.5" in m for m in passed), passed
    wait_event(fleet, "Promoted", f"revision {new}")
    assert not load.failures, load.summary()


def test_promote_skips_the_bake_and_abort_rolls_back(fleet: Fleet, load: Load, files):
    stable = settle(fleet, files)
    long_bake = rollout(bakeSeconds=3600)
    fleet.patch_spec({"model": tiny_model(), "checkpoint": files["v3"], "rollout": long_bake})
    st = fleet.wait(
        lambda s: (s.get("canary") or {}).get("bakeStartedAt"), "step 1 baking", timeout=120
    )
    candidate = int(st["candidate"]["revision"])
    annotate(fleet, {"hotswap.dev/promote": f"{candidate}/1"})
    fleet.wait(lambda s: (s.get("canary") or {}).get("step") == 2, "step 2", timeout=60)
    wait_event(fleet, "StepPromoted", f"revision {candidate}")
    annotate(fleet, {"hotswap.dev/abort": str(candidate)})
    st = fleet.wait(lambda s: s.get("phase") == "RolledBack", "aborted", timeout=120)
    assert "aborted" in st["rollback"]["reason"], st["rollback"]
    wait_event(fleet, "Aborted", f"revision {candidate}")
    all_on(fleet, "RolledBack", stable)
    assert not load.failures, load.summary()


def annotate(fleet: Fleet, notes: dict[str, str]) -> None:
    """What `kubectl hotswap promote|abort` writes (commands.py)."""
    fleet.client.patch(fleet.path, {"metadata": {"annotations": notes}})
