"""The Canary planner's bake windows, checks and commands (pure): a given clock, given
window figures, given annotations; what it decides."""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from operator_samples import SHA_A, SHA_B, SPEC, report, sync_context

from hotswap_operator import canary, commands, rollout
from hotswap_operator.reasons import Phase
from hotswap_operator.spec import SpecError, parse_spec
from hotswap_operator.status import ModelDeploymentStatus
from hotswap_operator.traffic import Traffic, Window

PODS = ("md-a", "md-b", "md-c", "md-d")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
LATENCY = {"metric": "p99Latency", "maxRatio": 1.5}
ERRORS = {"metric": "errorRate", "maxIncrease": 0.01}


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def spec(sha: str = SHA_A, **rollout_fields: Any) -> dict[str, Any]:
    out = copy.deepcopy(SPEC)
    out["replicas"] = 4
    out["checkpoint"] = {"uri": f"file:///models/{sha[0]}.safetensors", "sha256": sha}
    out["rollout"] = {
        "strategy": "Canary",
        "steps": [1, "50%", "100%"],
        "bakeSeconds": 60,
        "checks": [LATENCY, ERRORS],
        **rollout_fields,
    }
    return out


def traffic(requests: float, errors: float, ms: float) -> Traffic:
    """`requests` with `errors` failed; every timed request took about `ms`."""
    ok = requests - errors
    le = ms / 1000
    return Traffic(requests, errors, ((le * 0.9, 0.0), (le * 1.1, ok), (float("inf"), ok)))


class World:
    def __init__(self) -> None:
        self.status = ModelDeploymentStatus()
        self.config = None
        self.events: list = []
        self.annotations: dict[str, str] = {}
        self.window: Window | None = None

    def plan(self, raw: dict[str, Any], now: float = 0):
        ctx = sync_context(self.status, self.config, at(now), PODS, name="md")
        ctx = dataclasses.replace(
            ctx, body={"metadata": {"annotations": self.annotations}}, window=self.window
        )
        p = rollout.plan(ctx, parse_spec(raw))
        self.status, self.config = p.status, p.config
        self.events += p.events
        return p

    def serve_all(self) -> None:
        pods = {}
        for pod in PODS:
            rev = self.config.revision_for(pod)
            pods[pod] = report(rev.revision, rev.checkpoint.sha256)
        self.status = self.status.model_copy(update={"pods": pods})

    def measured(self, canary_t: Traffic, stable_t: Traffic, unread: tuple[str, ...] = ()):
        state = self.status.canary
        self.window = Window(
            revision=state.revision,
            step=state.step,
            started_at=state.bake_started_at,
            seconds=60,
            canary=canary_t,
            stable=stable_t,
            unread=unread,
        )

    @property
    def raw(self) -> dict[str, Any]:
        return self.status.to_raw()

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]


@pytest.fixture
def world() -> World:
    """Revision 1 stable; revision 2's first step served by md-a, its bake begun at 10 s."""
    w = World()
    w.plan(spec())
    w.serve_all()
    w.plan(spec())
    w.plan(spec(SHA_B), now=5)
    w.serve_all()
    w.plan(spec(SHA_B), now=10)
    w.events.clear()
    return w


def test_a_served_step_starts_its_bake_and_requeues_at_its_end(world):
    state = world.raw["canary"]
    assert (state["step"], state["bakeStartedAt"]) == (1, at(10))
    assert canary.step_deadline(world.status, parse_spec(spec(SHA_B))) == T0 + timedelta(seconds=70)
    assert canary.override(world.status, Phase.PROGRESSING)[1] == "Baking"


def test_bake_not_elapsed_holds_the_step(world):
    world.plan(spec(SHA_B), now=69)
    assert world.raw["canary"]["step"] == 1 and world.events == []


def test_the_step_timeout_does_not_count_while_baking(world):
    world.plan(spec(SHA_B, stepTimeoutSeconds=30, checks=[], bakeSeconds=600), now=500)
    assert world.raw["canary"]["step"] == 1 and "rollback" not in world.raw


def test_passing_checks_advance_to_the_next_step(world):
    world.measured(traffic(200, 1, 60), traffic(600, 3, 58))
    world.plan(spec(SHA_B), now=71)
    state = world.raw["canary"]
    assert (state["step"], state["bakeStartedAt"], state["checkedStep"]) == (2, "", 1)
    assert [c["result"] for c in state["checks"]] == ["Passed", "Passed"]
    assert world.reasons() == ["AnalysisPassed", "CanaryStep"]
    assert len(world.config.candidate_pods) == 2


def test_a_slower_candidate_fails_p99_and_rolls_back_with_the_figures(world):
    world.measured(traffic(200, 0, 180), traffic(600, 0, 58))
    world.plan(spec(SHA_B), now=71)
    assert world.config.candidate is None and world.config.stable.revision == 1
    rollback = world.raw["rollback"]
    assert rollback["revision"] == 2 and rollback["pod"] == ""
    assert rollback["reason"].startswith("check p99Latency: canary p99 ")
    assert (
        "x the stable pods' " in rollback["reason"] and "above maxRatio 1.5" in rollback["reason"]
    )
    assert [c["result"] for c in rollback["checks"]] == ["Failed", "Passed"]
    assert world.reasons() == ["AnalysisFailed", "RolledBack"]
    phase, reason, message = canary.override(world.status, Phase.READY)
    assert (phase, reason) == ("RolledBack", "RolledBack") and "p99Latency" in message
    world.plan(spec(SHA_B), now=80)  # the same content is not tried again
    assert world.config.candidate is None


def test_an_error_rate_rise_fails(world):
    world.measured(traffic(200, 20, 60), traffic(600, 3, 60))
    world.plan(spec(SHA_B), now=71)
    reason = world.raw["rollback"]["reason"]
    assert reason.startswith("check errorRate: canary error ratio 10.0% (20 of 200)")
    assert "above the stable pods' 0.5% (3 of 600), above maxIncrease 1.0%" in reason


def test_without_auto_rollback_a_failed_check_halts(world):
    world.measured(traffic(200, 0, 180), traffic(600, 0, 58))
    world.plan(spec(SHA_B, autoRollback=False), now=71)
    assert "p99Latency" in world.raw["canary"]["halted"]
    assert world.reasons() == ["AnalysisFailed", "RolloutHalted"]


def test_an_unread_pod_is_inconclusive_and_runs_another_window(world):
    world.measured(traffic(200, 0, 180), traffic(600, 0, 58), unread=("md-b: timed out",))
    world.plan(spec(SHA_B), now=71)
    state = world.raw["canary"]
    assert (state["step"], state["bakeStartedAt"], state["windows"]) == (1, at(71), 1)
    assert {c["result"] for c in state["checks"]} == {"Inconclusive"}
    assert "md-b: timed out" in state["checks"][0]["message"]
    assert world.reasons() == ["AnalysisInconclusive"] and "rollback" not in world.raw


def test_too_few_requests_are_inconclusive(world):
    world.measured(traffic(5, 0, 60), traffic(600, 0, 58))
    world.plan(spec(SHA_B), now=71)
    message = world.raw["canary"]["checks"][0]["message"]
    assert "5 canary requests in the 60 s window, fewer than minRequests 20" in message


def test_no_window_from_this_replica_runs_a_new_window(world):
    world.plan(spec(SHA_B), now=71)  # no reading at the window's start (a new leader)
    state = world.raw["canary"]
    assert state["bakeStartedAt"] == at(71) and state["checks"][0]["metric"] == "window"


def test_promote_skips_the_rest_of_the_bake(world):
    world.annotations[commands.PROMOTE] = commands.promote_value(2, 1)
    world.plan(spec(SHA_B), now=20)
    assert world.raw["canary"]["step"] == 2 and world.reasons() == ["StepPromoted"]
    world.serve_all()
    world.plan(spec(SHA_B), now=25)  # the stale command does not skip step 2's bake
    assert world.raw["canary"]["step"] == 2 and world.raw["canary"]["bakeStartedAt"] == at(25)


def test_promote_full_skips_every_remaining_step(world):
    world.annotations[commands.PROMOTE] = commands.promote_value(2, None)
    world.plan(spec(SHA_B), now=20)
    assert world.raw["canary"]["step"] == 3 and len(world.config.candidate_pods) == 4
    world.serve_all()
    world.plan(spec(SHA_B), now=25)
    assert world.config.candidate is None and world.config.stable.revision == 2


def test_abort_rolls_back_now_and_retry_runs_it_again_under_its_number(world):
    world.annotations[commands.ABORT] = "2"
    world.plan(spec(SHA_B, autoRollback=False), now=20)
    rollback = world.raw["rollback"]
    assert world.config.candidate is None and "aborted" in rollback["reason"]
    assert world.reasons() == ["Aborted"]
    world.plan(spec(SHA_B), now=30)  # stays rolled back
    assert world.config.candidate is None
    del world.annotations[commands.ABORT]
    world.annotations[commands.RETRY] = commands.retry_value(2, rollback["rolledBackAt"])
    world.plan(spec(SHA_B), now=40)
    assert world.config.candidate.revision == 2 and world.raw["canary"]["step"] == 1
    assert world.reasons()[-1] == "Retried" and "rollback" not in world.raw
    assert [h["revision"] for h in world.raw["history"]] == [1, 2]


def test_a_retry_of_another_rollback_does_nothing(world):
    world.annotations[commands.ABORT] = "2"
    world.plan(spec(SHA_B), now=20)
    world.annotations = {commands.RETRY: commands.retry_value(2, at(1))}
    world.plan(spec(SHA_B), now=30)
    assert world.config.candidate is None


def test_bake_without_checks_advances_when_it_ends(world):
    raw = spec(SHA_B, checks=[])
    world.plan(raw, now=69)
    assert world.raw["canary"]["step"] == 1
    world.plan(raw, now=70)
    assert world.raw["canary"]["step"] == 2 and world.reasons() == ["CanaryStep"]


def test_checks_need_a_bake_and_each_metric_its_threshold():
    with pytest.raises(SpecError, match="checks need a bake window"):
        parse_spec(spec(bakeSeconds=0))
    with pytest.raises(SpecError, match="p99Latency takes maxRatio and/or maxMilliseconds"):
        parse_spec(spec(checks=[{"metric": "p99Latency", "maxIncrease": 0.1}]))
    with pytest.raises(SpecError, match="maxRatio"):
        parse_spec(spec(checks=[{"metric": "p99Latency", "maxRatio": 0.5}]))
