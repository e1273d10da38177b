"""pod_problems.problem: the scheduler's and kubelet's reason a runtime pod does not run,
read from Pod objects shaped as the kubelet and scheduler write them."""

from __future__ import annotations

import pytest

from hotswap_operator.context import PodInfo
from hotswap_operator.pod_problems import PROBLEM_CHARS, problem


def pod(**status) -> dict:
    return {"metadata": {"name": "m-1"}, "status": {"phase": "Pending", **status}}


def container(state: dict, last: dict | None = None, ready: bool = False) -> dict:
    out = {"name": "runtime", "ready": ready, "restartCount": 3, "state": state}
    if last is not None:
        out["lastState"] = {"terminated": last}
    return out


UNSCHEDULABLE = {
    "type": "PodScheduled",
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/1 nodes are available: 1 Insufficient example.com/tpu. preemption: 0/1 nodes"
    " are available: 1 No preemption victims found for incoming pod.",
}


def test_unschedulable_is_the_schedulers_words():
    found = problem(pod(conditions=[UNSCHEDULABLE]))
    assert found.startswith(
        "Unschedulable: 0/1 nodes are available: 1 Insufficient example.com/tpu"
    )


@pytest.mark.parametrize(
    "reason, message",
    [
        ("ImagePullBackOff", 'Back-off pulling image "registry.invalid/none:1"'),
        ("ErrImagePull", "failed to pull and unpack image"),
        ("CreateContainerConfigError", 'secret "creds" not found'),
        ("InvalidImageName", 'Failed to apply default image tag "UPPER"'),
    ],
)
def test_a_container_that_cannot_start_says_why(reason, message):
    waiting = {"waiting": {"reason": reason, "message": message}}
    assert problem(pod(containerStatuses=[container(waiting)])) == f"{reason}: {message}"


def test_a_crash_loop_names_the_last_exit():
    waiting = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}}
    oom = {"reason": "OOMKilled", "exitCode": 137}
    found = problem(pod(phase="Running", containerStatuses=[container(waiting, oom)]))
    assert (
        found == "CrashLoopBackOff: back-off 40s restarting (last exit: OOMKilled, exit code 137)"
    )


def test_a_container_restarted_after_oom_and_not_ready_says_so():
    running = container({"running": {}}, {"reason": "OOMKilled", "exitCode": 137})
    assert problem(pod(phase="Running", containerStatuses=[running])) == (
        "restarted after OOMKilled, exit code 137"
    )
    ready = container({"running": {}}, {"reason": "OOMKilled", "exitCode": 137}, ready=True)
    assert problem(pod(phase="Running", containerStatuses=[ready])) == ""  # it recovered


def test_an_evicted_pod_says_so():
    evicted = pod(phase="Failed", reason="Evicted", message="The node was low on memory.")
    assert problem(evicted) == "Evicted: The node was low on memory."


def test_init_containers_come_first():
    init = container({"waiting": {"reason": "ImagePullBackOff", "message": "init image"}})
    main = container({"waiting": {"reason": "PodInitializing"}})
    found = problem(pod(initContainerStatuses=[init], containerStatuses=[main]))
    assert found == "ImagePullBackOff: init image"


@pytest.mark.parametrize(
    "status",
    [
        {},
        {"containerStatuses": [container({"waiting": {"reason": "ContainerCreating"}})]},
        {"phase": "Running", "containerStatuses": [container({"running": {}}, ready=True)]},
        {"conditions": [{"type": "PodScheduled", "status": "True"}]},
    ],
)
def test_a_pod_on_its_way_has_no_problem(status):
    assert problem(pod(**status)) == ""


def test_a_hostile_message_is_one_bounded_line():
    waiting = {"waiting": {"reason": "ErrImagePull", "message": "a\nb\x1b[31m" + "x" * 10_000}}
    found = problem(pod(containerStatuses=[container(waiting)]))
    assert len(found) <= PROBLEM_CHARS and "\n" not in found and "\x1b" not in found


def test_pod_info_carries_the_problem():
    info = PodInfo.from_pod(pod(conditions=[UNSCHEDULABLE]))
    assert info.problem.startswith("Unschedulable:") and not info.ready
