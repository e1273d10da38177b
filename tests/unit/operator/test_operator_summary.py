"""summary.py: what the pods' reports add up to, and which changes deserve an Event."""

import json

import pytest
from operator_samples import SHA_A, SHA_B, report

from hotswap_operator import summary
from hotswap_operator.context import PodInfo
from hotswap_operator.reasons import ConditionType, Reason
from hotswap_operator.spec import DisruptionBudget
from hotswap_operator.status import (
    ConditionValue,
    ModelDeploymentStatus,
    merge_patch,
    set_condition,
)

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"
STABLE2 = {"revision": 2, "uri": "file:///m/v2", "sha256": SHA_B, "digest": "d2"}
PODS = [PodInfo("p-a", True), PodInfo("p-b", True), PodInfo("p-c", True)]


def st(pods, **extra):
    """A stored status plus, under "pods", the pods' reports (their ModelReplicas)."""
    return {"stable": STABLE2, "observedGeneration": 2, "pods": pods, **extra}


def stored(raw):
    return {k: v for k, v in raw.items() if k != "pods"}


def summarized(raw, pods=PODS, desired=3, now=NOW):
    """The status a sync would write from the stored status and the reports in `raw`."""
    typed = ModelDeploymentStatus.from_raw(stored(raw))
    typed = typed.model_copy(update={"pods": raw.get("pods") or {}})
    result = summary.summarize(desired, typed, pods)
    return summary.apply(typed, result, now, typed.observed_generation or 0)


def patch_for(raw, pods=PODS, desired=3, now=NOW):
    return merge_patch(stored(raw), summarized(raw, pods, desired, now))


def events(raw, patch):
    old = ModelDeploymentStatus.from_raw(raw)
    new = ModelDeploymentStatus.from_raw({**raw, **patch})
    return summary.transition_events(old, new)


def cond(patch, kind):
    return next(c for c in patch["conditions"] if c["type"] == kind)


def test_all_pods_on_the_stable_revision_is_ready():
    patch = patch_for(st({p.name: report(2, SHA_B) for p in PODS}))
    assert patch["phase"] == "Ready"
    assert (patch["updated"], patch["ready"]) == ("3/3", "3/3")
    assert (patch["replicas"], patch["readyReplicas"], patch["updatedReplicas"]) == (3, 3, 3)
    assert cond(patch, "Ready")["status"] == "True"
    assert cond(patch, "Ready")["reason"] == "AllPodsServing"
    assert cond(patch, "Progressing")["reason"] == "RolloutComplete"
    assert cond(patch, "Degraded")["status"] == "False"
    assert cond(patch, "Ready")["observedGeneration"] == 2


def test_pods_still_loading_is_progressing_and_names_them():
    reports = {"p-a": report(2, SHA_B), "p-b": report(1, SHA_A, "Loading", target=2)}
    patch = patch_for(st(reports))
    assert patch["phase"] == "Progressing" and patch["updated"] == "1/3"
    message = cond(patch, "Progressing")["message"]
    assert "p-b (Loading)" in message and "p-c (no report yet)" in message
    assert "p-a" not in message.split("waiting for")[1]


def test_no_pod_serving_yet_is_pending():
    patch = patch_for(st({"p-a": report(None, None, "Loading", target=2)}))
    assert patch["phase"] == "Pending"
    assert cond(patch, "Progressing")["status"] == "True"


def test_a_failed_pod_makes_it_degraded_naming_pod_and_cause():
    reports = {p.name: report(2, SHA_B) for p in PODS}
    stable3 = {**STABLE2, "revision": 3, "sha256": "c" * 64}
    reports["p-b"] = report(2, SHA_B, "Failed", target=3, message="sha256 mismatch: got 12ab")
    patch = patch_for(st(reports, stable=stable3))
    assert patch["phase"] == "Degraded"
    degraded = cond(patch, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "SwapFailed"
    assert degraded["message"] == (
        "pod p-b failed revision 3: sha256 mismatch: got 12ab (still serving revision 2)"
    )
    found = events({}, patch)
    assert [(e.type, e.reason) for e in found] == [("Warning", "SwapFailed")]


def test_an_old_failure_does_not_count_against_a_newer_revision():
    reports = {p.name: report(2, SHA_B) for p in PODS}
    reports["p-a"] = report(2, SHA_B, "Failed", target=1, message="old")
    assert patch_for(st(reports))["phase"] == "Ready"


def test_every_pod_failing_with_nothing_served_is_failed():
    reports = {p.name: report(None, None, "Failed", target=2, message="404") for p in PODS}
    patch = patch_for(st(reports))
    assert patch["phase"] == "Failed"
    assert cond(patch, "Degraded")["reason"] == "NoPodServing"


def test_unready_pods_are_not_ready_yet():
    pods = [PodInfo("p-a", True), PodInfo("p-b", False), PodInfo("p-c", True)]
    patch = patch_for(st({p.name: report(2, SHA_B) for p in pods}), pods)
    assert patch["phase"] == "Progressing" and patch["ready"] == "2/3"


def test_scaling_up_counts_against_the_new_replicas():
    patch = patch_for(st({p.name: report(2, SHA_B) for p in PODS}), desired=5)
    assert patch["phase"] == "Progressing" and patch["updated"] == "3/5"
    assert "3 of 5 pods exist" in cond(patch, "Progressing")["message"]


def test_terminating_pods_do_not_count_and_reports_never_reach_the_status():
    pods = [PodInfo("p-a", True), PodInfo("p-b", True, terminating=True)]
    reports = {"p-a": report(2, SHA_B), "p-b": report(2, SHA_B)}
    patch = patch_for(st(reports), pods, desired=1)
    assert "pods" not in patch
    assert patch["replicas"] == 1 and patch["phase"] == "Ready"


def test_an_older_versions_status_pods_map_is_removed():
    raw = st({p.name: report(2, SHA_B) for p in PODS})
    patch = merge_patch(raw, summarized(raw))  # stored with a `pods` map
    assert patch["pods"] is None


def test_a_thousand_pods_keep_the_status_small():
    """Whatever the number of pods, the status names at most MAX_FAILURES of them."""
    many = [PodInfo(f"p-{i:04d}", True) for i in range(1000)]
    reports = {p.name: report(2, SHA_B, "Failed", target=2, message="bad") for p in many}
    reports.update({p.name: report(1, SHA_A, "Loading", target=2) for p in many[:500]})
    patch = patch_for(st(reports), many, desired=1000)
    assert patch["failedReplicas"] == 500
    assert [f["pod"] for f in patch["failures"]] == [f"p-{i:04d}" for i in range(500, 510)]
    assert patch["failures"][0] == {"pod": "p-0500", "revision": 2, "reason": "bad"}
    assert cond(patch, "Degraded")["message"].endswith("(and 490 more pods)")
    healthy = {p.name: report(1, SHA_A, "Loading", target=2) for p in many}
    waiting = cond(patch_for(st(healthy), many, desired=1000), "Progressing")["message"]
    assert waiting.endswith("p-0009 (Loading) (and 990 more pods)")
    assert len(json.dumps(patch)) < 8 * 1024


def test_unreadable_report_is_a_failure_naming_the_pod():
    reports = {p.name: report(2, SHA_B) for p in PODS}
    reports["p-c"] = {"state": "Exploded"}
    patch = patch_for(st(reports))
    assert patch["phase"] == "Degraded"
    assert "pod p-c sent an unreadable report" in cond(patch, "Degraded")["message"]


def test_unchanged_status_gives_an_empty_patch_and_keeps_transition_times():
    raw = st({p.name: report(2, SHA_B) for p in PODS})
    first = patch_for(raw)
    settled = {**raw, **first}
    assert patch_for(settled, now=LATER) == {}
    # A flip moves only the flipped conditions' lastTransitionTime.
    degraded = {
        **settled,
        "pods": {**settled["pods"], "p-a": report(2, SHA_B, "Failed", target=2, message="x")},
    }
    patch = patch_for(degraded, now=LATER)
    times = {c["type"]: c["lastTransitionTime"] for c in patch["conditions"]}
    # Available stays: the failed pod still serves the old revision
    assert times == {"Available": NOW, "Ready": LATER, "Progressing": NOW, "Degraded": LATER}


def test_set_condition_keeps_the_transition_time_until_the_status_flips():
    ready = ConditionValue(ConditionType.READY, True, Reason.ALL_PODS_SERVING, "3/3")
    first = set_condition(ModelDeploymentStatus(), ready, NOW, 1)
    again = set_condition(
        first, ConditionValue(ConditionType.READY, True, Reason.UPDATING, "2/3"), LATER, 2
    )
    (kept,) = again.conditions
    assert (kept.reason, kept.message, kept.last_transition_time) == ("Updating", "2/3", NOW)
    assert kept.observed_generation == 2
    flipped = set_condition(
        again, ConditionValue(ConditionType.READY, False, Reason.UPDATING, "1/3"), LATER, 2
    )
    assert [(c.status, c.last_transition_time) for c in flipped.conditions] == [("False", LATER)]


def test_spec_error_is_failed_with_the_reason():
    patch = patch_for({"error": "spec.rollout.strategy Canary is not supported"})
    assert patch["phase"] == "Failed"
    assert cond(patch, "Degraded")["reason"] == "InvalidSpec"
    assert "Canary" in cond(patch, "Ready")["message"]


def test_ready_transition_posts_rollout_complete():
    patch = patch_for(st({p.name: report(2, SHA_B) for p in PODS}))
    (event,) = events({"phase": "Progressing"}, patch)
    assert (event.type, event.reason) == ("Normal", "RolloutComplete")
    assert "3/3 pods serve revision 2" in event.message


def pod_events(memory, raw):
    return summary.pod_events(memory, ModelDeploymentStatus(pods=raw or {}).reports())


def test_pod_events_report_swaps_once_and_skip_first_sight():
    before = {"p-a": report(1, SHA_A)}
    events, memory = pod_events(None, before)
    assert events == []
    after = {"p-a": {**report(2, SHA_B), "swapSeconds": {"fetch": 0.5, "load": 0.25}}}
    events, memory = pod_events(memory, after)
    (event,) = events
    assert event.reason == "Swapped"
    assert event.message == (
        f"pod p-a swapped to revision 2 (sha256 {SHA_B[:12]}) in 0.75s (fetch 0.50s, load 0.25s)"
    )
    assert pod_events(memory, after)[0] == []
    failed = {"p-a": report(2, SHA_B, "Failed", target=3, message="NaN in outputs")}
    (event,), _ = pod_events(memory, failed)
    assert (event.type, event.reason) == ("Warning", "SwapFailed")
    assert "NaN in outputs" in event.message


def test_pods_failing_for_the_same_cause_share_one_sentence():
    stable3 = {**STABLE2, "revision": 3, "sha256": "c" * 64}
    reports = {
        p.name: report(2, SHA_B, "Failed", target=3, message="sha256 mismatch") for p in PODS
    }
    reports["p-c"] = report(None, None, "Failed", target=3, message="404")
    patch = patch_for(st(reports, stable=stable3))
    assert cond(patch, "Degraded")["message"] == (
        "pods p-a, p-b failed revision 3: sha256 mismatch (still serving revision 2); "
        "pod p-c failed revision 3: 404 (serving nothing)"
    )


def test_a_pods_first_model_is_loaded_not_swapped():
    _, memory = pod_events(None, {})
    events, memory = pod_events(memory, {"p-a": report(None, None, "Loading", 1)})
    assert events == []
    (event,), _ = pod_events(memory, {"p-a": report(1, SHA_A)})
    assert event.reason == "Loaded" and "loaded revision 1" in event.message


def test_serving_names_what_ready_pods_answer_with_never_a_failed_revision():
    """The SERVING column: a failed revision 3 shows as phase Degraded while the pods
    keep answering with revision 2; mid-rollout both show; unready pods do not count."""
    stable3 = {**STABLE2, "revision": 3, "sha256": "c" * 64}
    failed = {p.name: report(2, SHA_B, "Failed", target=3, message="bad") for p in PODS}
    patch = patch_for(st(failed, stable=stable3))
    assert patch["serving"] == "2" and patch["phase"] == "Degraded"
    mixed = {"p-a": report(3, "c" * 64), "p-b": report(2, SHA_B), "p-c": report(10, SHA_A)}
    pods = [PodInfo("p-a", True), PodInfo("p-b", True), PodInfo("p-c", False)]
    assert patch_for(st(mixed, stable=stable3), pods)["serving"] == "2,3"
    nothing = patch_for(st({"p-a": report(None, None, "Loading", target=2)}))
    assert "serving" not in nothing or nothing["serving"] is None


def test_pod_events_are_bounded_however_many_pods_swapped():
    before = {f"p-{i:04d}": report(1, SHA_A) for i in range(1000)}
    _, memory = pod_events(None, before)
    after = {pod: report(2, SHA_B) for pod in before}
    after["p-0999"] = report(1, SHA_A, "Failed", target=2, message="NaN in outputs")
    events, _ = pod_events(memory, after)
    assert len(events) == 10
    assert [e.reason for e in events[:9]] == ["Swapped"] * 9
    assert events[0].message.startswith("pod p-0000 swapped to revision 2")
    assert (events[-1].type, events[-1].reason) == ("Warning", "SwapFailed")
    assert events[-1].message.startswith("and 991 more pods: 990 loaded or swapped, 1 failed")


def test_available_holds_through_a_rollout_and_a_refused_checkpoint():
    old = {p.name: report(1, SHA_A) for p in PODS}  # revision 2 not taken yet
    patch = patch_for(st(old))
    assert cond(patch, "Available")["status"] == "True"
    assert cond(patch, "Ready")["status"] == "False"  # not every pod on revision 2
    assert cond(patch, "Progressing")["status"] == "True"
    refused = {p.name: report(1, SHA_A, "Failed", target=2, message="bad") for p in PODS}
    patch = patch_for(st(refused))
    assert cond(patch, "Available")["status"] == "True"  # revision 1 still answers
    assert cond(patch, "Degraded")["status"] == "True"


def test_available_needs_the_budgets_minimum_of_ready_serving_pods():
    reports = {"p-a": report(2, SHA_B)}  # one pod serves; two have no report yet
    typed = ModelDeploymentStatus.from_raw(stored(st(reports)))
    typed = typed.model_copy(update={"pods": reports})
    for required, holds in ((1, "True"), (2, "False")):
        result = summary.summarize(3, typed, PODS, required)
        status = summary.apply(typed, result, NOW, 2)
        available = status.condition(ConditionType.AVAILABLE)
        assert available is not None and available.status == holds
        assert available.message == f"1 ready pods serve a revision, {required} needed"
    unready = [PodInfo("p-a", False), *PODS[1:]]
    result = summary.summarize(3, typed, unready, 1)
    assert result.conditions[0].status is False  # serving but not ready: not answering


@pytest.mark.parametrize(
    "budget, desired, wanted",
    [
        ({}, 3, 2),  # maxUnavailable 1 by default
        ({}, 1, 1),  # never zero pods while one is desired
        ({}, 0, 0),
        ({"minAvailable": 2}, 3, 2),
        ({"minAvailable": "50%"}, 3, 2),  # rounded up, as a PodDisruptionBudget does
        ({"maxUnavailable": "25%"}, 10, 7),
        ({"maxUnavailable": 5}, 3, 1),
        ({"minAvailable": 9}, 3, 3),
    ],
)
def test_minimum_serving_reads_the_disruption_budget(budget, desired, wanted):
    assert summary.minimum_serving(DisruptionBudget.model_validate(budget), desired) == wanted


def test_pods_that_do_not_run_show_the_kubelets_reason():
    pull = 'ImagePullBackOff: Back-off pulling image "registry.invalid/none"'
    pods = [
        PodInfo("p-a", True),
        PodInfo("p-b", False, problem=pull),
        PodInfo("p-c", False, problem=pull),
    ]
    patch = patch_for(st({"p-a": report(2, SHA_B)}), pods=pods)
    progressing = cond(patch, "Progressing")["message"]
    assert f"p-b ({pull})" in progressing and f"p-c ({pull})" in progressing
    assert patch["message"] == f"pods p-b, p-c not running ({pull})"
    settled = patch_for(st({p.name: report(2, SHA_B) for p in PODS}))
    assert "message" not in settled  # nothing holds it back: absent


def moving(pods=PODS, now=NOW, raw=None):
    """A rollout to revision 2 with one pod on it and two loading."""
    reports = {"p-a": report(2, SHA_B), "p-b": report(1, SHA_A), "p-c": report(1, SHA_A)}
    raw = raw if raw is not None else st(reports)
    typed = ModelDeploymentStatus.from_raw(stored(raw)).model_copy(update={"pods": reports})
    result = summary.summarize(3, typed, pods)
    return summary.apply(typed, result, now, 2, deadline=600)


def later(seconds: int) -> str:
    return f"2026-01-01T00:{seconds // 60:02d}:{seconds % 60:02d}Z"


def test_a_rollout_that_stops_moving_passes_its_progress_deadline():
    first = moving()
    progressing = first.condition(ConditionType.PROGRESSING)
    assert progressing is not None and progressing.last_update_time == NOW
    assert summary.progress_due(first, 600, NOW) == 601
    raw = {**st({}), **first.to_raw()}
    still = moving(raw=raw, now=later(599)).condition(ConditionType.PROGRESSING)
    assert still is not None and still.status == "True" and still.last_update_time == NOW
    stuck = moving(raw=raw, now=later(600))
    condition = stuck.condition(ConditionType.PROGRESSING)
    assert condition is not None and condition.status == "False"
    assert condition.reason == "ProgressDeadlineExceeded"
    assert condition.message.startswith("no progress for 600s (spec.progressDeadlineSeconds)")
    (event,) = summary.transition_events(ModelDeploymentStatus.from_raw(raw), stuck)
    assert event.reason is Reason.PROGRESS_DEADLINE_EXCEEDED
    again = moving(raw={**st({}), **stuck.to_raw()}, now=later(900))
    assert again.condition(ConditionType.PROGRESSING) == condition  # stays stuck, no Event
    assert summary.transition_events(stuck, again) == []


def test_progress_moves_the_deadline():
    raw = {**st({}), **moving().to_raw()}
    unready = [PodInfo("p-a", True), PodInfo("p-b", False), PodInfo("p-c", True)]
    moved = moving(pods=unready, raw=raw, now=later(599))  # a pod less ready: it moved
    condition = moved.condition(ConditionType.PROGRESSING)
    assert condition is not None and condition.last_update_time == later(599)
    new_spec = {**raw, "conditions": [{**c, "observedGeneration": 1} for c in raw["conditions"]]}
    fresh = moving(raw=new_spec, now=later(900)).condition(ConditionType.PROGRESSING)
    assert fresh is not None and fresh.status == "True" and fresh.last_update_time == later(900)


def test_pods_the_deployment_cannot_create_are_named_with_the_reason():
    why = 'FailedCreate: pods "x" is forbidden: pod rejected: RuntimeClass "nvidia" not found'
    typed = ModelDeploymentStatus.from_raw(stored(st({})))
    result = summary.summarize(3, typed, [], 1, creating=why)
    status = summary.apply(typed, result, NOW, 2)
    assert status.message == f"pods cannot be created ({why})"
    progressing = status.condition(ConditionType.PROGRESSING)
    assert progressing is not None and progressing.message.endswith(f"; {status.message}")
    complete = summary.summarize(3, typed, PODS, 1, creating=why)  # every pod exists
    assert complete.message is None or "cannot be created" not in complete.message
