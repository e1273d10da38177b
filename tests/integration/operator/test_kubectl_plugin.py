"""`kubectl hotswap` against the real API server, as a user with only its documented role.

The plugin runs as a subprocess (the `kubectl-hotswap` console script, and once through
the real kubectl's plugin discovery), authenticated as `alice`, whom a RoleBinding gives
exactly examples/kubectl-hotswap-rbac.yaml. Status is made by the operator's real sync
(hotswap_operator.sync.Syncer, called directly); the pods' reports are written the way a
runtime pod writes them (its ModelReplica, named after the pod).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from replicas import replica_reports, report

from devcluster import oci_registry
from devcluster.rest import MERGE_PATCH
from devcluster.waiting import wait_for
from hotswap_operator import resources
from hotswap_operator.config import RuntimeDefaults
from hotswap_operator.context import PodInfo
from hotswap_operator.events import EventRecorder
from hotswap_operator.kube import Kube
from hotswap_operator.kubectl import cli
from hotswap_operator.sync import Syncer
from tests.fixtures_runtime import hostile_http as hostile

PLUGIN = Path(sys.executable).parent / "kubectl-hotswap"
COMPLETER = PLUGIN.parent / "kubectl_complete-hotswap"  # kubectl runs it on TAB
MD = "/apis/hotswap.dev/v1alpha1/namespaces/{ns}/modeldeployments"
NAME = "resnet"
SHA1, SHA2, SHA3 = "1" * 64, "2" * 64, "3" * 64
# credentials and a presigned query in the URI: the plugin must never print them
URI = "https://svc:pa55word@store.example/m/v{n}.safetensors?X-Amz-Signature=s3cr3t{n}"
SPEC = {
    "replicas": 2,
    "model": {"architecture": "torchvision/resnet18", "inputShape": [3, 32, 32]},
    "checkpoint": {"uri": URI.format(n=1), "sha256": SHA1},
    "runtime": {"device": "cpu"},
}
PODS = [PodInfo("resnet-pod-a", True), PodInfo("resnet-pod-b", True)]
CPU = RuntimeDefaults.model_validate({"gpu": {"enabled": False}})


class World:
    """The ModelDeployment `resnet` in one namespace, synced by the operator's sync."""

    def __init__(self, cluster, namespace, spec=SPEC, pods=PODS):
        self.client, self.ns, self.pods = cluster.rest(), namespace, pods
        kube = Kube(cluster.api_client())
        self.syncer = Syncer(kube, CPU, EventRecorder(kube, resources.MANAGER))
        body = {
            "apiVersion": "hotswap.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": NAME},
            "spec": copy.deepcopy(spec),
        }
        self.client.post(MD.format(ns=namespace), body)
        self.sync()

    @property
    def path(self):
        return f"{MD.format(ns=self.ns)}/{NAME}"

    def sync(self):
        reports = replica_reports(self.client, self.ns, NAME)
        self.syncer.sync(self.ns, NAME, self.pods, None, reports)
        return self.get()

    def get(self):
        return self.client.get(self.path)

    def patch_spec(self, spec):
        self.client.patch(self.path, {"spec": spec}, MERGE_PATCH)
        return self.sync()

    def report(self, pod, revision, sha256, state="Serving", **extra):
        """What runtime pod `pod` writes about itself: its ModelReplica's status."""
        status = {"revision": revision, "sha256": sha256, "state": state, **extra}
        report(self.client, self.ns, pod, status, NAME)


def plugin(kubeconfig, *args, env=None, kubectl=None):
    """Run `kubectl-hotswap ARGS` (or `KUBECTL hotswap ARGS`) as a user would."""
    cmd = [*(kubectl or [str(PLUGIN)]), *args]
    if kubeconfig is not None:
        cmd += ["--kubeconfig", str(kubeconfig)]
    environ = {**os.environ, "PATH": f"{PLUGIN.parent}{os.pathsep}{os.environ['PATH']}"}
    environ.pop("KUBECONFIG", None)
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, env={**environ, **(env or {})}
    )
    assert "s3cr3t" not in done.stdout + done.stderr and "pa55word" not in done.stdout
    return done


def two_revisions(cluster, namespace):
    """Revision 1 served by both pods, then revision 2: pod-a serves it, pod-b failed it."""
    world = World(cluster, namespace)
    world.report("resnet-pod-a", 1, SHA1)
    world.report("resnet-pod-b", 1, SHA1)
    world.patch_spec({"checkpoint": {"uri": URI.format(n=2), "sha256": SHA2}})
    seconds = {"fetch": 0.25, "parse": 0.01, "load": 0.125, "validate": 0.02, "activate": 0.001}
    world.report("resnet-pod-a", 2, SHA2, swapSeconds=seconds, targetRevision=2)
    world.report(
        "resnet-pod-b", 1, SHA1, "Failed", targetRevision=2, targetSha256=SHA2,
        message="checkpoint https://store.example/m/v2.safetensors: sha256 mismatch",
    )  # fmt: skip
    world.sync()
    return world


def test_status_history_and_undo_with_only_the_documented_role(crd, namespace, alice):
    world = two_revisions(crd, namespace)
    shown = plugin(alice, "status", NAME, "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "Revision:      latest 2, stable 2; pods serve 1 (1 pod), 2 (1 pod)" in text
    assert "https://store.example/m/v2.safetensors (sha256 222222222222)" in text
    row_a = next(line.split() for line in text.splitlines() if "resnet-pod-a" in line)
    assert row_a == [
        "resnet-pod-a",
        "2",
        SHA2[:12],
        "Serving",
        "250ms",
        "10ms",
        "125ms",
        "20ms",
        "-",
        "1.0ms",
        "-",
    ]  # fmt: skip (no shadow phase: "-")
    assert "Failed on 2" in text and "sha256 mismatch" in text
    doc = json.loads(plugin(alice, "status", NAME, "-n", namespace, "-o", "json").stdout)
    assert doc["revisions"]["served"] == {"1": 1, "2": 1}
    assert [p["name"] for p in doc["pods"]] == ["resnet-pod-a", "resnet-pod-b"]

    hist = yaml.safe_load(plugin(alice, "history", NAME, "-n", namespace, "-o", "yaml").stdout)
    assert [(r["revision"], r["sha256"], r["outcome"]) for r in hist["revisions"]] == [
        (1, SHA1, "superseded"),
        (2, SHA2, "stable, 1 pod serves it, 1 failed it"),
    ]

    undone = plugin(alice, "undo", NAME, "-n", namespace)
    assert undone.returncode == 0, undone.stderr
    assert "spec set back to revision 1" in undone.stdout
    assert "new revision (3, with revision 1's content)" in undone.stdout
    spec = world.get()["spec"]
    assert spec["checkpoint"] == {"uri": URI.format(n=1), "sha256": SHA1}  # written whole
    status = world.sync()["status"]  # the operator numbers it as the plugin said
    assert status["revision"] == 3 and status["stable"]["sha256"] == SHA1
    assert [h["revision"] for h in status["history"]] == [1, 2, 3]
    table = plugin(alice, "history", NAME, "-n", namespace).stdout.splitlines()
    assert table[3].split()[0] == "3" and table[3].endswith(
        "stable, 0 pods serve it (content of 1)"
    )


def test_undo_refusals_and_errors_exit_1_and_change_nothing(crd, namespace, alice):
    world = two_revisions(crd, namespace)
    world.patch_spec({"checkpoint": {"uri": URI.format(n=1), "sha256": SHA1}})  # revision 3
    version = world.get()["metadata"]["resourceVersion"]
    cases = {
        ("undo", NAME, "--to-revision", "3"): "revision 3 (https://store.example/m/v1",
        ("undo", NAME, "--to-revision", "1"): "is what the spec already asks for",
        ("undo", NAME, "--to-revision", "7"): "revision 7 is not in status.history "
        "(revisions kept: 1, 2, 3)",
        ("status", "nosuch"): f"ModelDeployment {namespace}/nosuch not found",
        ("undo", "nosuch"): f"ModelDeployment {namespace}/nosuch not found",
    }
    for args, words in cases.items():
        done = plugin(alice, *args, "-n", namespace)
        assert (done.returncode, done.stdout) == (1, ""), (args, done)
        assert done.stderr.startswith("error: ") and words in done.stderr, (args, done.stderr)
    dry = plugin(alice, "undo", NAME, "--dry-run", "-o", "json", "-n", namespace)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout) | {"numbering": ""} == {
        "action": "undo",
        "name": NAME,
        "toRevision": 2,
        "uri": "https://store.example/m/v2.safetensors",
        "sha256": SHA2,
        "numbering": "",
        "dryRun": True,
    }
    usage = plugin(alice, "undo", NAME, "--to-revision", "0", "-n", namespace)
    assert usage.returncode == 2 and "revisions start at 1" in usage.stderr
    elsewhere = plugin(alice, "status", NAME, "-n", "default")  # not bound there
    assert elsewhere.returncode == 1 and "forbidden" in elsewhere.stderr
    assert world.get()["metadata"]["resourceVersion"] == version


def test_list_and_version_with_only_the_documented_role(crd, namespace, alice):
    two_revisions(crd, namespace)
    listed = plugin(alice, "list", "-n", namespace)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert rows[0][:3] == ["NAME", "SERVING", "LATEST"]
    assert [row[:3] for row in rows[1:]] == [[NAME, "1,2", "2"]]  # pod-b failed 2: serves 1
    assert (
        json.loads(plugin(alice, "list", "-n", namespace, "-o", "json").stdout)["items"][0][
            "namespace"
        ]
        == namespace
    )
    everywhere = plugin(alice, "list", "-A")  # bound in one namespace only
    assert (everywhere.returncode, everywhere.stdout) == (1, "")
    assert "forbidden; -A needs list on modeldeployments.hotswap.dev in every namespace" in (
        everywhere.stderr
    )
    shown = plugin(alice, "version", "-o", "json")  # discovery: no permission needed
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["server"] == {
        "kubernetes": crd.version(),
        "apiGroup": "hotswap.dev",
        "servedVersions": ["v1alpha1"],
        "preferredVersion": "v1alpha1",
    }
    assert "you may not list Deployments in namespace " in shown.stdout  # alice: no list
    assert "Operator:      unknown: you may not list Deployments" in (
        plugin(alice, "version", "-n", namespace).stdout
    )


def test_version_names_the_operator_deployments_an_admin_may_list(crd, namespace):
    """The chart's labels find the operator: its version label, image and readiness."""
    labels = {"app.kubernetes.io/name": "hotswap-operator", "app.kubernetes.io/version": "9.8.7"}
    container = {"name": "operator", "image": "example.com/hotswap-operator:9.8.7"}
    crd.rest().post(
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "hotswap", "labels": labels},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            },
        },
    )
    shown = plugin(crd.kubeconfig, "version")
    assert shown.returncode == 0, shown.stderr
    assert (
        f"Operator:      9.8.7 ({namespace}/hotswap, image example.com/hotswap-operator:9.8.7, "
        "0/2 ready)"
    ) in shown.stdout.splitlines()
    doc = json.loads(plugin(crd.kubeconfig, "version", "-o", "json").stdout)["operator"]
    assert doc["scope"] == "every namespace"
    assert {"namespace": namespace, "name": "hotswap", "version": "9.8.7"}.items() <= next(
        d for d in doc["deployments"] if d["namespace"] == namespace
    ).items()


def test_a_user_without_patch_is_told_what_is_missing(crd, namespace):
    world = two_revisions(crd, namespace)
    crd.kubectl(
        "create", "role", "read-md", "-n", namespace,
        "--verb=get", "--verb=list", "--resource=modeldeployments.hotswap.dev",
        "--resource=modelreplicas.hotswap.dev",
    )  # fmt: skip
    crd.kubectl(
        "create", "rolebinding", "bob-read", "-n", namespace, "--role=read-md", "--user=bob"
    )
    bob = crd.user_kubeconfig(f"bob-{uuid.uuid4().hex[:6]}", "bob")
    assert plugin(bob, "status", NAME, "-n", namespace).returncode == 0
    before = world.get()["spec"]
    denied = plugin(bob, "undo", NAME, "-n", namespace)
    assert denied.returncode == 1
    assert "forbidden; the plugin needs get and patch on modeldeployments.hotswap.dev" in (
        denied.stderr
    )
    assert world.get()["spec"] == before


def test_undo_never_overwrites_an_edit_made_after_its_read(
    crd, namespace, alice, monkeypatch, capsys
):
    """Someone changes the checkpoint between the plugin's read and its write: the API
    server refuses the write (resourceVersion precondition) and their edit stands."""
    world = two_revisions(crd, namespace)
    theirs = {"uri": URI.format(n=3), "sha256": SHA3}
    read = cli.get_deployment

    def read_then_someone_edits(session, name):
        stale = read(session, name)
        world.client.patch(world.path, {"spec": {"checkpoint": theirs}}, MERGE_PATCH)
        return stale

    monkeypatch.setattr(cli, "get_deployment", read_then_someone_edits)
    code = cli.main(["undo", NAME, "-n", namespace, "--kubeconfig", str(alice)])
    err = capsys.readouterr().err
    assert code == 1 and "changed after it was read" in err and "nothing was written" in err
    assert world.get()["spec"]["checkpoint"] == theirs


def test_pause_and_resume_a_canary(crd, namespace, alice):
    canary = {**SPEC, "replicas": 2, "rollout": {"strategy": "Canary", "steps": [1, "100%"]}}
    world = World(crd, namespace, canary)
    world.report("resnet-pod-a", 1, SHA1)
    world.report("resnet-pod-b", 1, SHA1)
    status = world.patch_spec({"checkpoint": {"uri": URI.format(n=2), "sha256": SHA2}})["status"]
    assert status["canary"]["step"] == 1 and status["candidatePods"] == ["resnet-pod-a"]

    paused = plugin(alice, "pause", NAME, "-n", namespace)
    assert paused.returncode == 0, paused.stderr
    assert "paused (revision 2 at step 1 of 2)" in paused.stdout
    assert world.sync()["status"]["canary"]["paused"] is True
    shown = plugin(alice, "status", NAME, "-n", namespace).stdout
    assert "Canary:        revision 2 at step 1 of 2, on resnet-pod-a (paused)" in shown
    again = plugin(alice, "pause", NAME, "-n", namespace)
    assert again.returncode == 0 and "already paused" in again.stdout

    resumed = plugin(alice, "resume", NAME, "-n", namespace)
    assert resumed.returncode == 0 and "resumed (revision 2 at step 1 of 2)" in resumed.stdout
    world.report("resnet-pod-a", 2, SHA2, targetRevision=2)
    assert world.sync()["status"]["canary"] == {**status["canary"], "step": 2} | {
        "stepStartedAt": world.get()["status"]["canary"]["stepStartedAt"]
    }

    world.patch_spec({"rollout": {"strategy": "AllAtOnce", "steps": None, "paused": False}})
    refused = plugin(alice, "pause", NAME, "-n", namespace)
    assert refused.returncode == 1 and "spec.rollout.strategy is AllAtOnce" in refused.stderr


def kubeconfig_with_context(source, path, context, namespace, server=None):
    """`source` (one context) renamed to `context`, with a namespace (and server)."""
    doc = json.loads(Path(source).read_text())
    for kind in ("clusters", "users", "contexts"):
        doc[kind][0]["name"] = f"{context}-{kind}"
    doc["contexts"][0]["context"] = {
        "cluster": f"{context}-clusters",
        "user": f"{context}-users",
        "namespace": namespace,
    }
    if server:
        doc["clusters"][0]["cluster"]["server"] = server
    doc["current-context"] = context
    doc["contexts"][0]["name"] = context
    path.write_text(json.dumps(doc))
    return path


def test_kubeconfig_env_context_and_namespace_as_kubectl(crd, namespace, alice, tmp_path):
    two_revisions(crd, namespace)
    mine = kubeconfig_with_context(alice, tmp_path / "alice", "alice", namespace)
    dead = kubeconfig_with_context(
        alice, tmp_path / "dead", "dead", namespace, server="https://127.0.0.1:9"
    )
    merged = {"KUBECONFIG": os.pathsep.join([str(dead), str(mine)])}  # current: dead
    down = plugin(None, "history", NAME, env=merged)
    assert down.returncode == 1
    assert "cannot reach the API server at https://127.0.0.1:9" in down.stderr
    ok = plugin(None, "history", NAME, "--context", "alice", env=merged)  # ns from context
    assert ok.returncode == 0, ok.stderr
    assert [line.split()[0] for line in ok.stdout.splitlines()] == ["REVISION", "1", "2"]


def plugin_kubectl():
    """A kubectl that runs plugins from PATH (the control plane's own build does not)."""
    found = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if found is None:
        return None
    env = {**os.environ, "PATH": f"{PLUGIN.parent}{os.pathsep}{os.environ['PATH']}"}
    listed = subprocess.run(
        [found, "plugin", "list"], capture_output=True, text=True, env=env, check=False
    )
    return [found] if str(PLUGIN) in listed.stdout else None


def test_kubectl_finds_the_plugin_on_path(crd, namespace, alice):
    kubectl = plugin_kubectl()
    if kubectl is None:
        pytest.skip("no kubectl with plugin support on PATH (set $KUBECTL to one)")
    two_revisions(crd, namespace)
    done = plugin(alice, "hotswap", "status", NAME, "-n", namespace, kubectl=kubectl)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Name:          {NAME}\nNamespace:     {namespace}\n")


def test_status_wait_until_ready_degraded_or_timeout(crd, namespace, alice):
    world = World(crd, namespace)  # no pod has reported: not Ready
    late = plugin(alice, "status", NAME, "--wait", "--timeout", "1s", "-n", namespace)
    assert late.returncode == 1 and "did not settle within 1s" in late.stderr
    assert late.stdout.startswith(f"Name:          {NAME}\n")

    env = {**os.environ, "PATH": f"{PLUGIN.parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(PLUGIN), "status", NAME, "-w", "--timeout", "2m", "-n", namespace]
    waiting = subprocess.Popen(
        [*cmd, "--kubeconfig", str(alice)], env=env, stdout=subprocess.PIPE, text=True
    )
    world.report("resnet-pod-a", 1, SHA1)
    world.report("resnet-pod-b", 1, SHA1)
    assert world.sync()["status"]["phase"] == "Ready"
    out, _ = waiting.communicate(timeout=60)
    assert waiting.returncode == 0 and "pods serve 1 (2 pods)" in out

    world.patch_spec({"checkpoint": {"uri": URI.format(n=2), "sha256": SHA2}})
    for pod in ("resnet-pod-a", "resnet-pod-b"):
        world.report(pod, 1, SHA1, "Failed", targetRevision=2, message="sha256 mismatch")
    assert world.sync()["status"]["phase"] == "Degraded"
    bad = plugin(alice, "status", NAME, "--wait", "-n", namespace)
    assert bad.returncode == 1, bad
    assert f"ModelDeployment {namespace}/{NAME} is Degraded: " in bad.stderr
    assert "sha256 mismatch" in bad.stderr


def tmux(server, *args):
    return subprocess.run(
        ["tmux", "-L", server, *args], capture_output=True, text=True, check=False, timeout=30
    )


def test_status_watch_redraws_a_rollout_of_three_pods_in_tmux(crd, namespace, alice):
    """`status --watch` on a terminal (tmux's): the screen shows the status as it is now,
    redrawn in place, through a rollout of 3 pods; Ctrl-C ends it."""
    pods = [PodInfo(f"resnet-pod-{c}", True) for c in "abc"]
    world = World(crd, namespace, {**SPEC, "replicas": 3}, pods)
    for pod in pods:
        world.report(pod.name, 1, SHA1)
    world.sync()
    server = f"hotswap-{uuid.uuid4().hex[:8]}"
    cmd = [str(PLUGIN), "status", NAME, "--watch", "-n", namespace, "--kubeconfig", str(alice)]
    started = tmux(server, "new-session", "-d", "-x", "160", "-y", "50", shlex.join(cmd))
    assert started.returncode == 0, started.stderr

    def screen():
        return tmux(server, "capture-pane", "-p").stdout

    try:
        wait_for(lambda: "pods serve 1 (3 pods)" in screen(), timeout=30, what="revision 1")
        world.patch_spec({"checkpoint": {"uri": URI.format(n=2), "sha256": SHA2}})
        seconds = {"fetch": 0.5, "parse": 0.01, "load": 0.25, "validate": 0.02, "activate": 0.001}
        for done, pod in enumerate(pods, 1):
            world.report(pod.name, 2, SHA2, swapSeconds=seconds, targetRevision=2)
            world.sync()
            counts = [(1, 3 - done), (2, done)]
            served = "pods serve " + ", ".join(
                f"{rev} ({n} pod{'s' if n != 1 else ''})" for rev, n in counts if n
            )
            wait_for(lambda s=served: s in screen(), timeout=30, what=served)
        shown = screen()
        print(f"\n{shown.rstrip()}")
        lines = shown.splitlines()
        assert lines[0].startswith(f"Every 2s: kubectl hotswap status ModelDeployment {namespace}")
        assert sum(line.startswith("Name:") for line in lines) == 1  # redrawn, not appended
        assert "Phase:         Ready" in shown and "500ms" in shown  # each pod's fetch
        tmux(server, "send-keys", "C-c")
        wait_for(lambda: tmux(server, "has-session").returncode != 0, timeout=15, what="exit")
    finally:
        tmux(server, "kill-server")


def test_set_checkpoint_with_a_sha256_or_resolved_from_a_local_copy(
    crd, namespace, alice, tmp_path
):
    world = World(crd, namespace)
    local = tmp_path / "v2.safetensors"
    local.write_bytes(b"weights of revision 2" * 1000)
    sha = hashlib.sha256(local.read_bytes()).hexdigest()
    uri = "file:///models/v2.safetensors"
    done = plugin(
        alice, "set", "checkpoint", NAME, uri, "--resolve", "--from", str(local), "-n", namespace
    )
    assert done.returncode == 0, done.stderr
    assert f"spec.checkpoint set to {uri} (sha256 {sha[:12]})" in done.stdout
    assert world.get()["spec"]["checkpoint"] == {"uri": uri, "sha256": sha}
    assert world.sync()["status"]["revision"] == 2  # the operator made a revision of it
    again = plugin(alice, "set", "checkpoint", NAME, uri, "--sha256", sha, "-n", namespace)
    assert again.returncode == 0 and "already" in again.stdout
    bad = plugin(alice, "set", "checkpoint", NAME, uri, "--sha256", "xyz", "-n", namespace)
    assert bad.returncode == 1 and "64 hex digits" in bad.stderr
    both = plugin(
        alice, "set", "checkpoint", NAME, uri, "--sha256", sha, "--resolve", "-n", namespace
    )
    assert both.returncode == 1 and "one of them" in both.stderr
    assert world.get()["spec"]["checkpoint"]["sha256"] == sha  # nothing else written


def test_set_checkpoint_resolves_oci_and_pins_the_manifest(crd, namespace, alice, tmp_path):
    """`--resolve` of an oci:// tag as alice, with her docker login for the registry
    (token auth): the layer's digest becomes the sha256, the URI is written pinned to the
    manifest's digest, and the output says so; a wrong password writes nothing."""
    world = World(crd, namespace)
    data = b"weights of an oci revision" * 1000
    sha = hashlib.sha256(data).hexdigest()
    with oci_registry.serve(tmp_path / "registry") as registry:
        digest = registry.push("team/resnet", "v2", {"w/m.safetensors": data})
        config = tmp_path / "config.json"
        config.write_text(registry.docker_config())
        env = {"SSL_CERT_FILE": str(registry.ca)}
        uri = f"oci://{registry.host}/team/resnet:v2/w/m.safetensors"
        line = ["set", "checkpoint", NAME, uri, "--resolve", "-n", namespace]
        wrong = tmp_path / "wrong.json"
        login = {"username": oci_registry.USER, "password": "not-the-password"}
        wrong.write_text(json.dumps({"auths": {registry.host: login}}))
        denied = plugin(alice, *line, "--registry-config", str(wrong), env=env)
        assert denied.returncode == 1 and "refused access (HTTP 401)" in denied.stderr
        assert world.get()["spec"]["checkpoint"]["sha256"] == SHA1  # nothing written
        done = plugin(alice, *line, "--registry-config", str(config), "-o", "json", env=env)
        assert done.returncode == 0, done.stderr
        pinned = f"oci://{registry.host}/team/resnet:v2@{digest}/w/m.safetensors"
        assert json.loads(done.stdout)["pinnedFrom"] == uri
        assert world.get()["spec"]["checkpoint"] == {"uri": pinned, "sha256": sha}
        again = plugin(alice, *line, "--registry-config", str(config), env=env)
        assert again.returncode == 0, again.stderr
        assert f"is already {pinned} (sha256 {sha[:12]})" in again.stdout
        assert f"the URI is pinned to manifest {digest}" in again.stdout
        for done in (denied, again):
            assert oci_registry.PASSWORD not in done.stdout + done.stderr
    assert world.sync()["status"]["revision"] == 2


def test_set_checkpoint_resolves_hf_and_pins_the_commit(crd, namespace, alice, tmp_path):
    """`--resolve` of an hf:// file on a branch as alice, with her HF_TOKEN: the URI is
    written at the commit the Hub names for the branch (a HEAD, its redirect not
    followed), the sha256 that of the file read at that commit; `-o json` says
    pinnedFrom; the token goes to the Hub only."""
    world = World(crd, namespace)
    data = b"weights of an hf revision" * 1000
    sha = hashlib.sha256(data).hexdigest()
    commit = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"
    with hostile.serve() as hub, hostile.serve() as cdn:
        blob = cdn.route("/lfs/m", hostile.ranged(data))
        lfs = hostile.hub_lfs(blob, hostile.linked(sha, len(data), commit))
        for revision in ("main", commit):
            hub.route(f"/team/resnet/resolve/{revision}/w/m.safetensors", lfs)
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_s3cr3t"}
        uri = "hf://team/resnet/w/m.safetensors"
        line = ["set", "checkpoint", NAME, uri, "--resolve", "-n", namespace]
        done = plugin(alice, *line, "-o", "json", env=env)
        assert done.returncode == 0, done.stderr
        pinned = f"hf://team/resnet@{commit}/w/m.safetensors"
        assert json.loads(done.stdout)["pinnedFrom"] == uri
        assert world.get()["spec"]["checkpoint"] == {"uri": pinned, "sha256": sha}
        asked = [(r.method, r.path) for r in hub.requests]
        assert asked == [
            ("HEAD", "/team/resnet/resolve/main/w/m.safetensors"),
            ("GET", f"/team/resnet/resolve/{commit}/w/m.safetensors"),
        ]
        assert {r.headers.get("Authorization") for r in hub.requests} == {"Bearer hf_s3cr3t"}
        assert cdn.requests and all("Authorization" not in r.headers for r in cdn.requests)
        again = plugin(alice, *line, env=env)
        assert again.returncode == 0, again.stderr
        assert f"the URI is pinned to commit {commit}" in again.stdout
    assert world.sync()["status"]["revision"] == 2


def test_tab_completes_modeldeployment_names_as_alice(crd, namespace, alice):
    """kubectl's own completion of `kubectl hotswap status <TAB>` (it runs
    kubectl_complete-hotswap from PATH) and the plugin's bash script both offer the
    namespace's ModelDeployments, read with the user's kubeconfig."""
    two_revisions(crd, namespace)
    env = {"KUBECONFIG": str(alice)}
    environ = {**os.environ, **env, "PATH": f"{PLUGIN.parent}{os.pathsep}{os.environ['PATH']}"}
    asked = subprocess.run(
        [str(COMPLETER), "-n", namespace, "status", "r"],
        capture_output=True,
        text=True,
        env=environ,
    )
    assert (asked.stdout.splitlines(), asked.stderr) == ([NAME, ":4"], "")
    kubectl = plugin_kubectl()
    if kubectl is not None:
        line = ["__complete", "hotswap", "-n", namespace, "undo", ""]
        done = plugin(None, *line, env=env, kubectl=kubectl)
        assert done.stdout.splitlines()[0] == NAME, done.stdout + done.stderr
    script = plugin(None, "completion", "bash").stdout
    words = ["kubectl-hotswap", "-n", namespace, "set", "checkpoint", ""]
    program = "\n".join(
        [
            script,
            f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})",
            f"COMP_CWORD={len(words) - 1}",
            "_kubectl_hotswap",
            'printf "%s\\n" "${COMPREPLY[@]}"',
        ]
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, env=environ)
    assert done.stdout.split() == [NAME], done.stderr
