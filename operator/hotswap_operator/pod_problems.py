"""What keeps a runtime pod from starting or running, in the scheduler's and the
kubelet's own words (pure).

A pod that never starts writes no report, so without this the ModelDeployment could only
say "no report yet" while the cause sat in the Pod's status: unschedulable (no node has
the resources), an image that cannot be pulled, a Secret or ConfigMap that is missing, a
container that crashes or is killed for memory. `problem` reads that status into one
short line ("ImagePullBackOff: Back-off pulling image ..."), which the conditions show.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hotswap_contract.redact import clip

PROBLEM_CHARS = 240  # one pod's line in a condition message
# waiting reasons of a container that is on its way (not a problem)
STARTING = frozenset({"ContainerCreating", "PodInitializing"})


def problem(pod: Mapping[str, Any]) -> str:
    """The first thing that keeps ``pod`` from running, or "" when nothing does: its
    eviction or failure, then the scheduler's refusal, then a container's waiting
    reason (with its last termination when it crashed), init containers first."""
    status = pod.get("status") or {}
    found = _failed(status) or _unschedulable(status) or _containers(status)
    return clip(found, PROBLEM_CHARS) if found else ""


def creation(deployment: Mapping[str, Any]) -> str:
    """Why the runtime Deployment cannot create pods (its ReplicaFailure condition:
    FailedCreate, e.g. a RuntimeClass that does not exist or a quota), or ""."""
    for condition in (deployment.get("status") or {}).get("conditions") or ():
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            line = _line(condition.get("reason") or "FailedCreate", condition.get("message"))
            return clip(line, PROBLEM_CHARS)
    return ""


def _failed(status: Mapping[str, Any]) -> str:
    if status.get("phase") != "Failed":
        return ""
    return _line(status.get("reason") or "Failed", status.get("message"))


def _unschedulable(status: Mapping[str, Any]) -> str:
    for condition in status.get("conditions") or ():
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return _line(condition.get("reason") or "Unschedulable", condition.get("message"))
    return ""


def _containers(status: Mapping[str, Any]) -> str:
    for key in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(key) or ():
            found = _container(container)
            if found:
                return found
    return ""


def _container(container: Mapping[str, Any]) -> str:
    state = container.get("state") or {}
    last = (container.get("lastState") or {}).get("terminated") or {}
    ended = _ended(last) if last else ""
    waiting = state.get("waiting") or {}
    reason = waiting.get("reason") or ""
    if reason and reason not in STARTING:
        line = _line(reason, waiting.get("message"))
        return f"{line} (last exit: {ended})" if ended else line
    terminated = state.get("terminated") or {}
    if terminated and terminated.get("reason") != "Completed":
        return _ended(terminated)
    if ended and not container.get("ready") and last.get("reason") == "OOMKilled":
        return f"restarted after {ended}"
    return ""


def _ended(terminated: Mapping[str, Any]) -> str:
    reason = terminated.get("reason") or "Error"
    code = terminated.get("exitCode")
    return f"{reason}, exit code {code}" if code is not None else str(reason)


def _line(reason: object, message: object) -> str:
    text = " ".join(str(message or "").split())  # one line, whatever the kubelet wrote
    return f"{reason}: {text}" if text else str(reason)
