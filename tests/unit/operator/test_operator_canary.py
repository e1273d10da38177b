"""The pure Canary planner: steps, promotion, rollback, timeout, pause, new pods, spec change.

Each test drives the planner the way the operator does: plan, apply the status patch
and the ConfigMap it returns, let pods report, plan again.
"""

import copy
from pathlib import Path

import pytest
import yaml
from operator_samples import SHA_A, SHA_B, SPEC, report, sync_context

from hotswap_operator import canary, rollout, summary
from hotswap_operator.context import PodInfo
from hotswap_operator.reasons import Phase
from hotswap_operator.spec import parse_spec
from hotswap_operator.status import ModelDeploymentStatus

SHA_C = "c" * 64
PODS = ("md-a", "md-b", "md-c", "md-d")
T0 = "2026-01-01T00:00:00Z"
REPO = Path(__file__).resolve().parents[3]


def canary_spec(sha=SHA_A, uri="file:///models/v1.safetensors", **rollout_fields):
    spec = copy.deepcopy(SPEC)
    spec["replicas"] = 4
    spec["checkpoint"] = {"uri": uri, "sha256": sha}
    spec["rollout"] = {"strategy": "Canary", "steps": [1, "50%", "100%"], **rollout_fields}
    return spec


class World:
    """Status, ConfigMap and pod reports as the operator and the pods would leave them."""

    def __init__(self, pods=PODS):
        self.status = ModelDeploymentStatus()
        self.config = None
        self.pods = list(pods)
        self.events: list = []

    @property
    def raw(self) -> dict:
        """Status as the API server would store it (what a merge patch leaves)."""
        return self.status.to_raw()

    def plan(self, spec, now=T0):
        ctx = sync_context(self.status, self.config, now, self.pods, name="md")
        p = rollout.plan(ctx, parse_spec(spec))
        self.status = p.status
        self.config = p.config
        self.events += p.events
        return p

    def serve_all(self, state="Serving", message=""):
        """Every pod reports on the revision model.json names for it."""
        pods = {}
        for pod in self.pods:
            rev = self.config.revision_for(pod)
            if state == "Serving" or rev == self.config.stable:
                pods[pod] = report(rev.revision, rev.checkpoint.sha256)
            else:  # failed the candidate: still serving stable
                stable = self.config.stable
                entry = report(stable.revision, stable.checkpoint.sha256, state, rev.revision)
                entry["message"] = message
                entry["targetSha256"] = rev.checkpoint.sha256
                pods[pod] = entry
        self.status = self.status.model_copy(update={"pods": pods})

    def on_candidate(self):
        return sorted(self.config.candidate_pods) if self.config.candidate else []


@pytest.fixture
def world():
    w = World()
    w.plan(canary_spec())
    w.serve_all()
    w.plan(canary_spec())
    assert w.raw["revision"] == 1 and w.config.candidate is None
    w.events.clear()
    return w


def test_step_counts_resolve_percentages_and_end_at_all_pods():
    assert canary.step_counts([1, "50%", "100%"], 4) == (1, 2, 4)
    assert canary.step_counts(["25%"], 4) == (1, 4)
    assert canary.step_counts([2, 2, "10%"], 3) == (2, 3)
    assert canary.step_counts([], 5) == (1, 3, 5)


def test_first_revision_is_stable_at_once():
    w = World()
    w.plan(canary_spec())
    assert w.config.stable.revision == 1 and w.config.candidate is None
    assert "canary" not in w.raw


def test_steps_advance_when_named_pods_serve_and_promote_at_the_end(world):
    v2 = canary_spec(SHA_B, "file:///models/v2.safetensors")
    seen = []
    world.plan(v2)
    for _ in range(3):
        seen.append(world.on_candidate())
        world.plan(v2)  # pods have not reported: nothing moves
        assert world.on_candidate() == seen[-1]
        world.serve_all()
        world.plan(v2)
    assert [len(s) for s in seen] == [1, 2, 4]
    assert seen[0] == ["md-a"] and set(seen[0]) <= set(seen[1]) <= set(seen[2])
    assert world.config.candidate is None and world.config.stable.revision == 2
    assert world.raw["revision"] == 2 and "canary" not in world.raw
    assert [e.reason for e in world.events] == [
        "RevisionCreated",
        "CanaryStep",
        "CanaryStep",
        "Promoted",
    ]
    assert [h["revision"] for h in world.raw["history"]] == [1, 2]


def test_candidate_failure_rolls_every_pod_back(world):
    v2 = canary_spec(SHA_B, "file:///models/nan.safetensors")
    world.plan(v2)
    world.serve_all(state="Failed", message="checkpoint holds NaN")
    world.plan(v2)
    assert world.config.candidate is None and world.config.candidate_pods == ()
    assert world.config.stable.revision == 1
    rollback = world.raw["rollback"]
    assert (rollback["revision"], rollback["pod"]) == (2, "md-a")
    assert "NaN" in rollback["reason"]
    assert world.events[-1].reason == "RolledBack" and "md-a" in world.events[-1].message
    phase, reason, message = canary.override(world.status, Phase.READY)
    assert (phase, reason) == ("RolledBack", "RolledBack") and "md-a" in message
    world.plan(v2)  # the same spec is not retried
    assert world.config.candidate is None and world.raw["rollback"] == rollback


def test_without_auto_rollback_the_rollout_halts(world):
    v2 = canary_spec(SHA_B, autoRollback=False)
    world.plan(v2)
    world.serve_all(state="Failed", message="validation output differs")
    world.plan(v2)
    assert world.on_candidate() == ["md-a"]
    phase, reason, message = canary.override(world.status, Phase.PROGRESSING)
    assert (phase, reason) == ("Degraded", "RolloutHalted")
    assert "md-a" in message and "validation" in message
    assert [e.reason for e in world.events] == ["RevisionCreated", "RolloutHalted"]
    world.plan(v2)  # halted stays halted, announced once
    assert len(world.events) == 2 and canary.step_deadline(world.status, parse_spec(v2)) is None


def test_step_timeout_rolls_back(world):
    v2 = canary_spec(SHA_B, stepTimeoutSeconds=60)
    world.plan(v2, now=T0)
    world.plan(v2, now="2026-01-01T00:01:00Z")
    assert world.config.candidate is not None
    world.plan(v2, now="2026-01-01T00:01:01Z")
    assert world.config.candidate is None
    assert "stepTimeoutSeconds 60" in world.raw["rollback"]["reason"]
    assert world.raw["rollback"]["pod"] == "md-a"


def test_the_step_deadline_is_when_the_step_times_out(world):
    v2 = canary_spec(SHA_B, stepTimeoutSeconds=60)
    assert canary.step_deadline(world.status, parse_spec(v2)) is None  # nothing running
    world.plan(v2, now="2026-01-01T00:00:30Z")
    deadline = canary.step_deadline(world.status, parse_spec(v2))
    assert deadline.isoformat() == "2026-01-01T00:01:30+00:00"
    paused = canary_spec(SHA_B, stepTimeoutSeconds=60, paused=True)
    world.plan(paused)
    assert canary.step_deadline(world.status, parse_spec(paused)) is None


def test_paused_holds_the_step_and_resume_restarts_its_clock(world):
    paused = canary_spec(SHA_B, paused=True, stepTimeoutSeconds=60)
    world.plan(paused)
    world.serve_all()
    world.plan(paused, now="2026-01-01T00:05:00Z")
    assert world.on_candidate() == ["md-a"]
    assert canary.override(world.status, Phase.PROGRESSING)[1] == "Paused"
    resumed = canary_spec(SHA_B, paused=False, stepTimeoutSeconds=60)
    world.plan(resumed, now="2026-01-01T00:10:00Z")  # step 1 is done: no timeout
    assert len(world.on_candidate()) == 2
    assert world.raw["canary"]["stepStartedAt"] == "2026-01-01T00:10:00Z"


def test_a_new_pod_mid_rollout_takes_stable(world):
    v2 = canary_spec(SHA_B)
    world.plan(v2)
    world.pods.append("md-0new")
    world.plan(v2)
    assert world.on_candidate() == ["md-a"]
    assert world.config.revision_for("md-0new").revision == 1


def test_a_deleted_canary_pod_is_replaced_by_the_next_pod(world):
    v2 = canary_spec(SHA_B)
    world.plan(v2)
    world.pods.remove("md-a")
    world.plan(v2)
    assert world.on_candidate() == ["md-b"]


def test_a_spec_change_mid_rollout_replaces_the_candidate(world):
    v2 = canary_spec(SHA_B)
    world.plan(v2)
    world.serve_all()
    world.plan(v2)
    assert len(world.on_candidate()) == 2
    v3 = canary_spec(SHA_C, "file:///models/v3.safetensors")
    world.plan(v3)
    assert world.config.candidate.revision == 3
    assert world.config.candidate.checkpoint.sha256 == SHA_C
    assert world.on_candidate() == ["md-a"] and world.raw["canary"]["step"] == 1
    assert [h["revision"] for h in world.raw["history"]] == [1, 2, 3]


def test_reverting_the_spec_to_stable_cancels_the_candidate(world):
    world.plan(canary_spec(SHA_B))
    world.plan(canary_spec())
    assert world.config.candidate is None and world.raw["revision"] == 1
    assert "canary" not in world.raw


def test_planning_twice_changes_nothing(world):
    v2 = canary_spec(SHA_B)
    world.plan(v2)
    status, config = copy.deepcopy(world.raw), world.config
    plan = world.plan(v2)
    assert world.raw == status and world.config == config and plan.events == []


def test_a_failure_after_rollback_of_a_different_revision_starts_fresh(world):
    world.plan(canary_spec(SHA_B))
    world.serve_all(state="Failed", message="bad")
    world.plan(canary_spec(SHA_B))
    world.plan(canary_spec(SHA_C))
    assert world.config.candidate.revision == 3
    assert "rollback" not in world.raw


def conditions(summary):
    return {c.type: (c.status, c.reason, c.message) for c in summary.conditions}


def test_status_shows_the_step_then_the_rollback(world):
    pods = [PodInfo(p, ready=True) for p in PODS]
    world.plan(canary_spec(SHA_B))
    during = summary.summarize(4, world.status, pods)
    assert during.phase == "Progressing"
    flag, reason, message = conditions(during)["Progressing"]
    assert (flag, reason) == (True, "CanaryStep") and "step 1 of 3" in message
    world.serve_all(state="Failed", message="probe output holds NaN")
    world.plan(canary_spec(SHA_B))
    world.serve_all()
    after = summary.summarize(4, world.status, pods)
    assert after.phase == "RolledBack"
    assert conditions(after)["Ready"][0] is True  # every pod serves stable again
    flag, reason, message = conditions(after)["Progressing"]
    assert (flag, reason) == (False, "RolledBack") and "md-a" in message and "NaN" in message


def test_the_canary_sample_is_a_valid_spec():
    sample = yaml.safe_load((REPO / "examples" / "resnet18-canary.yaml").read_text())
    spec = parse_spec(sample["spec"], name=sample["metadata"]["name"])
    assert spec.rollout.strategy == "Canary"
    assert canary.step_counts(spec.rollout.steps, spec.replicas) == (1, 2, 4)
