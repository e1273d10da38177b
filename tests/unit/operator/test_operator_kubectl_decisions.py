"""kubectl hotswap promote / abort / retry (pure edits) and the checks in status/history."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from operator_samples import SHA_A, SHA_B, SPEC, body

from hotswap_operator import commands
from hotswap_operator.kubectl import decisions, views
from hotswap_operator.kubectl.board import applicable
from hotswap_operator.kubectl.edits import RefusedError
from hotswap_operator.spec import parse_spec

CHECK = {
    "metric": "p99Latency",
    "result": "Failed",
    "canary": 182.0,
    "stable": 58.0,
    "message": "check p99Latency: canary p99 182 ms is 3.1x the stable pods' 58 ms, above "
    "maxRatio 1.5",
}


def spec(sha: str) -> dict[str, Any]:
    out = copy.deepcopy(SPEC)
    out["checkpoint"] = {"uri": f"file:///models/{sha[0]}.safetensors", "sha256": sha}
    out["rollout"] = {"strategy": "Canary", "bakeSeconds": 60}
    return out


def record(revision: int, sha: str) -> dict[str, Any]:
    digest = parse_spec(spec(sha)).content_digest()
    return {
        "revision": revision,
        "uri": f"file:///models/{sha[0]}.safetensors",
        "sha256": sha,
        "digest": digest,
    }


def running() -> dict[str, Any]:
    status = {
        "stable": record(1, SHA_A),
        "candidate": record(2, SHA_B),
        "candidatePods": ["resnet-a"],
        "history": [record(1, SHA_A), record(2, SHA_B)],
        "canary": {
            "revision": 2,
            "step": 1,
            "steps": [1, 2, 3],
            "stepStartedAt": "2026-01-01T00:00:00Z",
            "bakeStartedAt": "2026-01-01T00:00:10Z",
            "checks": [],
            "windows": 0,
        },
    }
    return body(spec(SHA_B), status)


def rolled_back() -> dict[str, Any]:
    status = {
        "stable": record(1, SHA_A),
        "history": [record(1, SHA_A), record(2, SHA_B)],
        "rollback": {
            **record(2, SHA_B),
            "stable": 1,
            "pod": "",
            "reason": CHECK["message"],
            "rolledBackAt": "2026-01-01T00:01:11Z",
            "checks": [CHECK],
        },
    }
    return body(spec(SHA_B), status)


def test_promote_names_the_revision_and_step_and_is_idempotent():
    md = running()
    edit = decisions.promote(md)
    assert edit.patch == {"metadata": {"annotations": {commands.PROMOTE: "2/1"}}}
    md["metadata"]["annotations"] = {commands.PROMOTE: "2/1"}
    assert decisions.promote(md).patch is None
    assert decisions.promote(md, full=True).patch == {
        "metadata": {"annotations": {commands.PROMOTE: "2/full"}}
    }


def test_abort_names_the_candidate_and_needs_a_rollout():
    assert decisions.abort(running()).patch == {"metadata": {"annotations": {commands.ABORT: "2"}}}
    with pytest.raises(RefusedError, match="no Canary rollout in progress"):
        decisions.abort(rolled_back())


def test_retry_names_the_rollback_and_clears_its_abort():
    md = rolled_back()
    md["metadata"]["annotations"] = {commands.ABORT: "2"}
    edit = decisions.retry(md)
    value = commands.retry_value(2, "2026-01-01T00:01:11Z")
    assert edit.patch == {
        "metadata": {"annotations": {commands.RETRY: value, commands.ABORT: None}}
    }
    with pytest.raises(RefusedError, match="no rolled-back revision"):
        decisions.retry(running())
    other = rolled_back()
    other["spec"] = spec("c" * 64)
    with pytest.raises(RefusedError, match="no longer names revision 2"):
        decisions.retry(other)


def test_the_dashboard_offers_abort_while_a_candidate_runs_and_retry_after_its_rollback():
    """The page's buttons are the edits above that would write now."""
    assert applicable(running()) == ["pause", "promote", "undo", "abort"]
    asked = running()
    asked["metadata"]["annotations"] = {commands.ABORT: "2"}
    assert "abort" not in applicable(asked)  # already asked: the operator rolls back next
    assert applicable(rolled_back()) == ["pause", "undo", "retry"]
    other = rolled_back()
    other["spec"] = spec("c" * 64)  # a new checkpoint since: retry would be refused
    assert "retry" not in applicable(other)
    paused = rolled_back()
    paused["spec"]["rollout"]["paused"] = True
    assert applicable(paused) == ["resume", "undo", "retry"]


def test_status_and_history_show_the_checks_and_their_figures():
    md = rolled_back()
    text = views.status_text(views.status_document(md, {}, None))
    assert f"Rolled back:   revision 2 to 1: {CHECK['message']}" in text
    assert f"Failed: {CHECK['message']}" in text
    doc = views.history_document(md, {}, None)
    assert doc["revisions"][1]["checks"][0]["canary"] == 182.0
    history = views.history_text(doc)
    assert "rolled back to 1: check p99Latency" in history
    assert f"revision 2 Failed: {CHECK['message']}" in history
