"""The kubectl plugin's pure parts: undo against the real planners, views, permissions.

The world is simulated by the operator's own planner (rollout.plan): the plugin's patch
is merged into the spec as the API server would (RFC 7386), and the next plan says what
the operator does with it, so the numbering the plugin announces is the planner's.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fake_api import merge
from operator_samples import SHA_A, SHA_B, SPEC, body, report, sync_context

from hotswap_operator import rollout
from hotswap_operator.kubectl import api, edits, views
from hotswap_operator.spec import parse_spec
from hotswap_operator.status import ModelDeploymentStatus

REPO = Path(__file__).resolve().parents[3]
SHA_C = "c" * 64
SECRET_URI = "https://alice:hunter2@store.example/v{n}.safetensors?X-Amz-Signature=s3cr3t#frag"


class World:
    """One ModelDeployment: its spec, and the status and model.json the planner made."""

    def __init__(self, spec=SPEC):
        self.spec = copy.deepcopy(spec)
        self.status = ModelDeploymentStatus()
        self.current = None
        self.clock = 0
        self.step()

    def step(self, pods=("pod-a", "pod-b", "pod-c")):
        self.clock += 1
        now = f"2026-11-27T10:00:{self.clock:02d}+00:00"
        ctx = sync_context(self.status, self.current, now, pods)
        plan = rollout.plan(ctx, parse_spec(self.spec))
        self.status, self.current = plan.status, plan.config
        return self

    def set_checkpoint(self, uri, sha256):
        self.spec = merge(self.spec, {"checkpoint": {"uri": uri, "sha256": sha256}})
        return self.step()

    def body(self):
        return body(self.spec, self.status.to_raw())

    def apply(self, edit):
        self.spec = merge(self.spec, edit.patch["spec"])
        return self.step()

    def history(self):
        return [(h.revision, h.sha256) for h in self.status.history or ()]


def test_undo_goes_back_to_the_previous_content_as_a_new_revision():
    world = World().set_checkpoint("file:///models/v2.safetensors", SHA_B)
    assert world.history() == [(1, SHA_A), (2, SHA_B)]
    edit = edits.undo(world.body())
    assert edit.patch == {
        "spec": {"checkpoint": {"uri": "file:///models/v1.safetensors", "sha256": SHA_A}}
    }
    assert edit.resource_version == "1"
    assert "new revision (3, with revision 1's content)" in edit.message
    world.apply(edit)
    assert world.status.revision == 3 and world.status.stable.sha256 == SHA_A
    assert world.history() == [(1, SHA_A), (2, SHA_B), (3, SHA_A)]
    doc = views.history_document(world.body(), {}, edits.current_digest(world.body()))
    assert [(r["revision"], r["sameContentAs"], r["inSpec"]) for r in doc["revisions"]] == [
        (1, None, True),  # the spec's content, as 3 (which the operator serves)
        (2, None, False),
        (3, 1, True),
    ]
    # undo again: the previous content is now revision 2's (as `kubectl rollout undo`)
    world.apply(edits.undo(world.body()))
    assert world.history()[-1] == (4, SHA_B)


def test_undo_to_a_named_revision_and_its_refusals():
    world = World().set_checkpoint("file:///v2", SHA_B).set_checkpoint("file:///v3", SHA_C)
    world.apply(edits.undo(world.body(), to_revision=1))
    assert world.status.stable.key == (4, SHA_A)
    with pytest.raises(
        edits.RefusedError,
        match=r"revision 9 is not in status.history "
        r"\(revisions kept: 1, 2, 3, 4\)",
    ):
        edits.undo(world.body(), to_revision=9)
    for current in (1, 4):  # revision 1 has the content the spec asks for, as 4 has
        with pytest.raises(edits.RefusedError, match="already asks for; nothing to undo"):
            edits.undo(world.body(), to_revision=current)
    fresh = body(SPEC, {})
    with pytest.raises(edits.RefusedError, match="no earlier revision"):
        edits.undo(fresh)


def test_undo_during_a_canary_to_stable_keeps_the_stable_number():
    canary = merge(SPEC, {"rollout": {"strategy": "Canary", "steps": [1, "100%"]}})
    world = World(canary).set_checkpoint("file:///v2", SHA_B)
    assert world.status.candidate.revision == 2 and world.status.canary.step == 1
    edit = edits.undo(world.body())
    assert "stable revision's content, so it keeps number 1" in edit.message
    world.apply(edit)
    assert world.status.candidate is None and world.status.stable.key == (1, SHA_A)
    assert world.history() == [(1, SHA_A), (2, SHA_B)]


def test_undo_restores_validation_by_the_recorded_digest():
    probe = {"uri": "file:///probe", "sha256": "d" * 64}
    validation = {"input": probe, "expected": {"uri": "file:///out", "sha256": "e" * 64}}
    world = World()
    world.spec = merge(
        world.spec, {"checkpoint": {"uri": "file:///v2", "sha256": SHA_B}, "validation": validation}
    )
    world.step()
    edit = edits.undo(world.body())
    assert edit.patch["spec"]["validation"] is None  # revision 1 had none
    world.apply(edit)
    assert world.status.stable.digest == world.status.history[0].digest


def test_undo_refuses_a_revision_whose_model_differs():
    world = World()
    world.spec = merge(
        world.spec,
        {
            "model": {"args": {"num_classes": 5}},
            "checkpoint": {"uri": "file:///v2", "sha256": SHA_B},
        },
    )
    world.step()
    with pytest.raises(edits.RefusedError, match=r"another spec\.model or spec\.validation"):
        edits.undo(world.body())


def test_pause_and_resume_are_canary_only_and_idempotent():
    canary = merge(SPEC, {"rollout": {"strategy": "Canary"}})
    world = World(canary).set_checkpoint("file:///v2", SHA_B)
    edit = edits.pause(world.body())
    assert edit.patch == {"spec": {"rollout": {"paused": True}}}
    assert "paused (revision 2 at step 1 of 3)" in edit.message
    world.apply(edit)
    assert world.status.canary.paused
    again = edits.pause(world.body())
    assert again.patch is None and "already paused" in again.message
    assert edits.resume(world.body()).patch == {"spec": {"rollout": {"paused": False}}}
    with pytest.raises(edits.RefusedError, match=r"spec\.rollout\.strategy is AllAtOnce"):
        edits.pause(World().body())


def test_views_never_show_credentials_of_a_checkpoint_uri():
    world = World(merge(SPEC, {"checkpoint": {"uri": SECRET_URI.format(n=1)}}))
    world.set_checkpoint(SECRET_URI.format(n=2), SHA_B)
    md = world.body()
    md["status"]["pods"] = {
        "pod-a": {**report(2, SHA_B), "swapSeconds": {"fetch": 0.25, "activate": 0.001}},
        "pod-b": report(1, SHA_A, "Failed", target=2, message="sha256 mismatch"),
        "pod-c": {"state": "Bogus"},
    }
    digest = edits.current_digest(md)
    reports = ModelDeploymentStatus.from_raw(md["status"]).reports()
    doc = views.status_document(md, reports, digest)
    hist = views.history_document(md, reports, digest)
    undo = edits.undo(md)
    shown = [
        views.status_text(doc),
        views.history_text(hist),
        json.dumps(doc),
        yaml.safe_dump(hist),
        undo.message,
        json.dumps(undo.document),
    ]
    for text in shown:
        assert "hunter2" not in text and "s3cr3t" not in text and "alice" not in text, text
        assert "frag" not in text
    assert "https://store.example/v1.safetensors" in undo.message
    assert undo.patch["spec"]["checkpoint"]["uri"] == SECRET_URI.format(n=1)  # written whole
    assert doc["revisions"] == {
        "latest": 2,
        "stable": 2,
        "candidate": None,
        "served": {"1": 1, "2": 1},
        "specApplied": 2,
    }
    text = views.status_text(doc)
    assert "250ms" in text and "sha256 mismatch" in text and "Unreadable" in text


def test_status_separates_unreadable_reports_from_served_revisions():
    md = World().body()
    md["status"]["pods"] = {"pod-a": report(1, SHA_A), "pod-x": {"state": "Bogus"}}
    reports = ModelDeploymentStatus.from_raw(md["status"]).reports()
    doc = views.status_document(md, reports, None)
    assert doc["revisions"]["served"] == {"1": 1}
    assert [p["state"] for p in doc["pods"]] == ["Serving", "Unreadable"]


def test_permissions_equal_the_documented_cluster_role():
    from hotswap_operator.kubectl import cli  # noqa: F401  (registers every call)

    role = yaml.safe_load((REPO / "examples" / "kubectl-hotswap-rbac.yaml").read_text())
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == api.PERMISSIONS


def test_the_plugin_runs_without_torch_or_kopf():
    code = (
        "import sys; from hotswap_operator.kubectl import cli; cli.parser(); "
        "print(sorted({'torch', 'kopf', 'fastapi', 'numpy'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_arguments_like_kubectl_flags_anywhere_and_durations():
    from hotswap_operator.kubectl import cli

    args = cli.parser().parse_args(["-n", "a", "status", "x", "--timeout", "5m", "-w"])
    assert (args.namespace, args.name, args.timeout, args.wait) == ("a", "x", 300.0, True)
    args = cli.parser().parse_args(["undo", "x", "-n", "b", "--context", "c", "--to-revision", "2"])
    assert (args.namespace, args.context, args.to_revision) == ("b", "c", 2)
    for bad in (["status", "x", "--timeout", "soon"], ["undo", "x", "--to-revision", "-1"]):
        with pytest.raises(SystemExit) as usage:
            cli.parser().parse_args(bad)
        assert usage.value.code == 2


def test_status_shows_what_judging_the_newest_revision_found():
    md = World().body()
    md["status"]["analysis"] = {
        "revision": 2,
        "pods": 3,
        "evaluationPod": "pod-b",
        "evaluation": {
            "revision": 2,
            "samples": 200,
            "accuracy": 0.6,
            "servingRevision": 1,
            "servingAccuracy": 1.0,
            "passed": False,
        },
        "shadowPod": "pod-c",
        "shadow": {
            "revision": 2,
            "metric": "top1",
            "decision": "Failed",
            "samples": 61,
            "disagreements": 9,
            "skipped": 2,
        },
    }
    reports = ModelDeploymentStatus.from_raw(md["status"]).reports()
    doc = views.status_document(md, reports, None)
    assert doc["analysis"]["shadowPod"] == "pod-c"
    text = views.status_text(doc)
    assert (
        "Evaluation:    revision 2 refused: accuracy 0.6000 on 200 samples (serving revision 1: "
        "1.0000), worst on pod pod-b" in text
    ), text
    assert (
        "Shadow:        revision 2 Failed: 9 of 61 samples disagree by top1 (2 skipped), "
        "worst on pod pod-c" in text
    ), text


def test_status_shows_the_url_and_what_holds_the_rollout_back():
    md = World().body()
    why = "pods resnet-a, resnet-b not running (ImagePullBackOff: Back-off pulling image)"
    md["status"] |= {"url": "http://resnet.ml.svc:8080", "message": why}
    doc = views.status_document(md, {}, None)
    assert doc["url"] == "http://resnet.ml.svc:8080" and doc["message"] == why
    text = views.status_text(doc)
    assert "URL:           http://resnet.ml.svc:8080" in text
    assert f"Held back by:  {why}" in text
    settled = views.status_text(views.status_document(World().body(), {}, None))
    assert "Held back by" not in settled and "URL:" not in settled
