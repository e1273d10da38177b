"""The spec edits the plugin makes (pure): undo to a revision of history, pause, resume,
set a new checkpoint.

`undo` writes back the content of a revision that `status.history` records: the
checkpoint (uri, sha256) and whichever of the current secretRef and validation gives
the recorded content digest (history keeps the digest of model, checkpoint and
validation, not the model itself, so a revision whose model differs is refused with
the fix). The operator numbers revisions as `kubectl rollout undo` does: content equal
to the stable revision (or the running candidate) keeps that number; older content
becomes a new revision, max(known) + 1, and history lists both. Every pod still holds
the old checkpoint in its sha256-keyed cache, so going back downloads nothing.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hotswap_contract.redact import redact_uri
from hotswap_contract.wire import KIND, short_sha
from hotswap_operator.kubectl.api import PluginError
from hotswap_operator.revisions import known_numbers
from hotswap_operator.spec import SpecError, parse_spec
from hotswap_operator.status import ModelDeploymentStatus, RevisionRecord

JSON = dict[str, Any]


class RefusedError(PluginError):
    """The edit makes no sense for this object; nothing was written."""


@dataclass(frozen=True)
class Edit:
    """A merge patch to write (None: nothing to write) and what to tell the user."""

    patch: JSON | None
    resource_version: str | None
    message: str
    document: JSON = field(default_factory=dict)  # for -o json|yaml


def _where(deployment: Mapping[str, Any]) -> str:
    meta = deployment.get("metadata") or {}
    return f"{KIND} {meta.get('namespace', '')}/{meta.get('name', '')}"


def describe(ref: RevisionRecord) -> str:
    return f"revision {ref.revision} ({redact_uri(ref.uri)}, sha256 {short_sha(ref.sha256)})"


def current_digest(deployment: Mapping[str, Any]) -> str:
    """The content digest of the spec as stored (what the operator compares)."""
    meta = deployment.get("metadata") or {}
    try:
        return parse_spec(deployment.get("spec") or {}, name=meta.get("name", "")).content_digest()
    except SpecError as exc:
        raise RefusedError(str(exc)) from None


def undo(deployment: Mapping[str, Any], to_revision: int | None = None) -> Edit:
    """Set the spec back to revision `to_revision` of history (default: the newest one
    whose content differs from the spec's)."""
    where = _where(deployment)
    status = ModelDeploymentStatus.from_raw(deployment.get("status"))
    history = list(status.history or ())
    digest = current_digest(deployment)
    target = _target(where, history, digest, to_revision)
    spec = deployment.get("spec") or {}
    patch, notes = _restore(where, spec, target)
    number = _number_after(status, target)
    message = (
        f"{where}: spec set back to {describe(target)}; pods that served it swap back "
        f"from their checkpoint cache, without a download. {number}"
        + "".join(f" {n}" for n in notes)
    )
    document = {
        "action": "undo",
        "name": (deployment.get("metadata") or {}).get("name"),
        "toRevision": target.revision,
        "uri": redact_uri(target.uri),
        "sha256": target.sha256,
        "numbering": number,
    }
    rv = (deployment.get("metadata") or {}).get("resourceVersion")
    return Edit(patch={"spec": patch}, resource_version=rv, message=message, document=document)


def _target(
    where: str, history: list[RevisionRecord], digest: str, to_revision: int | None
) -> RevisionRecord:
    known = ", ".join(str(h.revision) for h in history) or "none"
    if to_revision is not None:
        found = [h for h in history if h.revision == to_revision]
        if not found:
            raise RefusedError(
                f"{where}: revision {to_revision} is not in status.history (revisions "
                f"kept: {known}); see `kubectl hotswap history`"
            )
        target = found[-1]
        if target.digest == digest:
            raise RefusedError(
                f"{where}: {describe(target)} is what the spec already asks for; nothing to undo"
            )
        return target
    older = [h for h in history if h.digest and h.digest != digest]
    if not older:
        raise RefusedError(
            f"{where}: no earlier revision to go back to (revisions kept: {known}); "
            "see `kubectl hotswap history`"
        )
    return older[-1]


def _restore(where: str, spec: Mapping[str, Any], target: RevisionRecord) -> tuple[JSON, list[str]]:
    """The spec merge patch that gives `target`'s content digest, and notes for the user."""
    checkpoint = dict(spec.get("checkpoint") or {})
    secret, validation = checkpoint.get("secretRef"), spec.get("validation")
    options = [(s, v) for s in _unique(secret, None) for v in _unique(validation, None)]
    for s, v in options:
        trial = copy.deepcopy(dict(spec))
        trial["checkpoint"] = {"uri": target.uri, "sha256": target.sha256}
        if s is not None:
            trial["checkpoint"]["secretRef"] = s
        if v is not None:
            trial["validation"] = v
        else:
            trial.pop("validation", None)
        if target.digest and _digest(trial) != target.digest:
            continue
        patch: JSON = {"checkpoint": {"uri": target.uri, "sha256": target.sha256}}
        notes = []
        if s != secret:
            patch["checkpoint"]["secretRef"] = None
            notes.append(
                "spec.checkpoint.secretRef is removed, as that revision had none: this "
                "changes the pod template, so the pods are replaced."
            )
        if v != validation:
            patch["validation"] = None
            notes.append("spec.validation is removed, as that revision had none.")
        if not target.digest:
            notes.append("(history has no content digest for it: model and validation kept.)")
        return patch, notes
    raise RefusedError(
        f"{where}: {describe(target)} had another spec.model or spec.validation than the "
        "spec has now, and status.history records only its checkpoint; set them by hand "
        f"(kubectl edit) with spec.checkpoint.uri and sha256 {short_sha(target.sha256)}..."
    )


def _digest(spec: Mapping[str, Any]) -> str | None:
    try:
        return parse_spec(spec).content_digest()
    except SpecError:
        return None


def _unique(*values: Any) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if value not in out:
            out.append(value)
    return out


def _number_after(status: ModelDeploymentStatus, target: RevisionRecord) -> str:
    """What number the operator gives the restored content (revisions.py's rules)."""
    for ref, role in ((status.stable, "stable"), (status.candidate, "candidate")):
        if ref is not None and ref.digest and ref.digest == target.digest:
            return f"It is the {role} revision's content, so it keeps number {ref.revision}."
    number = max(known_numbers(status, None), default=0) + 1
    return (
        f"The operator records it as a new revision ({number}, with revision "
        f"{target.revision}'s content), as `kubectl rollout undo` does."
    )


def pause(deployment: Mapping[str, Any]) -> Edit:
    """Set spec.rollout.paused (Canary only): the current step holds."""
    return _paused(deployment, True)


def resume(deployment: Mapping[str, Any]) -> Edit:
    """Clear spec.rollout.paused: the step clock starts again and the rollout goes on."""
    return _paused(deployment, False)


def _paused(deployment: Mapping[str, Any], paused: bool) -> Edit:
    where = _where(deployment)
    spec = deployment.get("spec") or {}
    rollout = spec.get("rollout") or {}
    strategy = rollout.get("strategy", "AllAtOnce")
    verb = "pause" if paused else "resume"
    if strategy != "Canary":
        raise RefusedError(
            f"{where}: spec.rollout.strategy is {strategy}; only Canary rollouts have steps "
            f"to {verb} (set spec.rollout.strategy: Canary)"
        )
    status = ModelDeploymentStatus.from_raw(deployment.get("status"))
    state, candidate = status.canary, status.candidate
    running = state is not None and candidate is not None
    if running and state is not None and candidate is not None:
        at = f"revision {candidate.revision} at step {state.step} of {len(state.steps)}"
    else:
        at = "no rollout in progress"
    document = {"action": verb, "name": (deployment.get("metadata") or {}).get("name")}
    if bool(rollout.get("paused", False)) == paused:
        document["changed"] = False
        already = "already paused" if paused else "not paused"
        return Edit(None, None, f"{where}: {already}, nothing to {verb} ({at})", document)
    document["changed"] = True
    if paused:
        what = at if running else f"{at}; the next revision will hold at step 1"
        message = f"{where}: paused ({what})"
    else:
        message = f"{where}: resumed ({at})"
        if state is not None and state.halted:
            message += (
                f"; note: the rollout is halted ({state.halted}); resume does not restart "
                "it: `kubectl hotswap undo` or a new spec.checkpoint does"
            )
    patch = {"spec": {"rollout": {"paused": paused}}}
    return Edit(patch, None, message, document)


SHA256 = re.compile(r"^[0-9a-f]{64}$")


def set_checkpoint(deployment: Mapping[str, Any], uri: str, sha256: str) -> Edit:
    """spec.checkpoint's uri and sha256 (its other fields, e.g. secretRef, stay): the
    operator makes a revision of it and the pods swap it in."""
    where = _where(deployment)
    sha = sha256.strip().lower()
    if not SHA256.match(sha):
        raise RefusedError(
            f"{where}: --sha256 must be 64 hex digits (sha256sum FILE prints them), or use "
            "--resolve to compute it"
        )
    current = (deployment.get("spec") or {}).get("checkpoint") or {}
    shown = f"{redact_uri(uri)} (sha256 {short_sha(sha)})"
    version = (deployment.get("metadata") or {}).get("resourceVersion")
    document = {"uri": redact_uri(uri), "sha256": sha}
    if current.get("uri") == uri and current.get("sha256") == sha:
        return Edit(None, None, f"{where}: spec.checkpoint is already {shown}", document)
    patch = {"spec": {"checkpoint": {"uri": uri, "sha256": sha}}}
    message = (
        f"{where}: spec.checkpoint set to {shown}; every pod verifies and swaps it in "
        "without a restart (kubectl hotswap status NAME --watch)"
    )
    return Edit(patch, version, message, document)
