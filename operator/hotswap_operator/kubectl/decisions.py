"""promote, abort, retry (pure): the annotation each writes on the ModelDeployment.

The value names the revision (and step, or rollback) it is meant for
(hotswap_operator/commands.py), so each command is idempotent and a stale one does
nothing; the operator acts on it at its next sync (an annotation change triggers one).
Annotations, not spec fields: these are one-shot decisions about one revision, not the
desired state; they never bump metadata.generation, and the operator, which writes
status only, never has to clear them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hotswap_operator import commands
from hotswap_operator.kubectl.edits import Edit, RefusedError, _where, current_digest
from hotswap_operator.status import CanaryState, ModelDeploymentStatus

JSON = dict[str, Any]


def _annotate(
    deployment: Mapping[str, Any], key: str, value: str | None, action: str, message: str
) -> Edit:
    notes = (deployment.get("metadata") or {}).get("annotations") or {}
    document = {"action": action, "annotation": key, "value": value}
    if notes.get(key) == value:
        return Edit(None, None, f"{message} (already asked)", {**document, "changed": False})
    patch = {"metadata": {"annotations": {key: value}}}
    return Edit(patch, None, message, {**document, "changed": True})


def _running(deployment: Mapping[str, Any], verb: str) -> tuple[int, CanaryState, str]:
    """(candidate revision, its Canary state, the stable revision) of a running rollout."""
    status = ModelDeploymentStatus.from_raw(deployment.get("status"))
    if status.candidate is None or status.canary is None:
        raise RefusedError(
            f"{_where(deployment)}: no Canary rollout in progress, nothing to {verb}"
            " (`kubectl hotswap status` shows where it stands)"
        )
    stable = str(status.stable.revision) if status.stable is not None else "stable"
    return status.candidate.revision, status.canary, stable


def promote(deployment: Mapping[str, Any], full: bool = False) -> Edit:
    """Skip the rest of the current step's bake (and its checks); `full`: every step."""
    revision, state, _ = _running(deployment, "promote")
    step = None if full else state.step
    what = "every remaining step" if full else f"the rest of step {state.step}'s bake"
    message = f"{_where(deployment)}: revision {revision}: promote skips {what}"
    value = commands.promote_value(revision, step)
    return _annotate(deployment, commands.PROMOTE, value, "promote", message)


def abort(deployment: Mapping[str, Any]) -> Edit:
    """Roll the running candidate back to stable now."""
    revision, _, stable = _running(deployment, "abort")
    message = f"{_where(deployment)}: revision {revision} aborted: every pod returns to {stable}"
    return _annotate(deployment, commands.ABORT, str(revision), "abort", message)


def retry(deployment: Mapping[str, Any]) -> Edit:
    """Run the rolled-back revision again from step 1 (the spec still names it)."""
    status = ModelDeploymentStatus.from_raw(deployment.get("status"))
    rollback, where = status.rollback, _where(deployment)
    if rollback is None or status.candidate is not None:
        raise RefusedError(f"{where}: no rolled-back revision to retry")
    if current_digest(deployment) != rollback.digest:
        raise RefusedError(
            f"{where}: the spec no longer names revision {rollback.revision}'s content;"
            " apply it again instead (the operator starts a new rollout)"
        )
    value = commands.retry_value(rollback.revision, rollback.rolled_back_at)
    message = f"{where}: revision {rollback.revision} runs again from step 1"
    edit = _annotate(deployment, commands.RETRY, value, "retry", message)
    notes = (deployment.get("metadata") or {}).get("annotations") or {}
    if notes.get(commands.ABORT) != str(rollback.revision):
        return edit
    patch = {"metadata": {"annotations": {commands.RETRY: value, commands.ABORT: None}}}
    return Edit(patch, None, message, {**edit.document, "changed": True})
