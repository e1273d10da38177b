"""The whole operator process against the real API server: what a trigger, a refused
Event or a quick succession of spec changes do to convergence.

No kubelet: the runtime pods stay Pending, which is all these tests need (they check
the ConfigMap and status the operator writes, not what pods serve).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from refused_events import allow_events, refuse_events

from devcluster.operator_process import operator_process
from devcluster.rest import ApiError, KubeClient
from devcluster.waiting import wait_for

MD = "/apis/hotswap.dev/v1alpha1/namespaces/{ns}/modeldeployments"
SHA1, SHA2 = "1" * 64, "2" * 64
SPEC = {
    "replicas": 2,
    "model": {"architecture": "torchvision/resnet18", "inputShape": [3, 8, 8]},
    "checkpoint": {"uri": "file:///models/v1.safetensors", "sha256": SHA1},
    "rollout": {"strategy": "AllAtOnce"},
    "runtime": {"device": "cpu"},
}
V1 = {"uri": "file:///models/v1.safetensors", "sha256": SHA1}
V2 = {"uri": "file:///models/v2.safetensors", "sha256": SHA2}


@pytest.fixture(scope="module")
def crd(cluster):
    cluster.apply_crd(Path(__file__).resolve().parents[3] / "crds")
    return cluster


def model_json(client: KubeClient, ns: str) -> dict | None:
    try:
        cm = client.get(f"/api/v1/namespaces/{ns}/configmaps/resnet-model")
    except ApiError as err:
        if err.status == 404:
            return None
        raise
    return json.loads(cm["data"]["model.json"])


def serves(client: KubeClient, ns: str, sha: str, revision: int) -> bool:
    config = model_json(client, ns)
    return (
        config is not None
        and config["stable"]["checkpoint"]["sha256"] == sha
        and (config["stable"]["revision"] == revision)
    )


def test_a_refused_event_loses_no_spec_change(crd, namespace, tmp_path):
    """Events are refused (422) from revision 2 on. The operator still converges on each
    spec change, also a change back to the previous checkpoint made while the one before
    failed to post its Event (kopf's diff base then still held that spec, saw no
    difference, and the fleet stayed on the newer revision while the spec named the
    older one)."""
    client = crd.rest()
    policy = ""
    try:
        with operator_process(crd, namespace, tmp_path / "operator.log"):
            body = {
                "apiVersion": "hotswap.dev/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": "resnet"},
                "spec": SPEC,
            }
            client.post(MD.format(ns=namespace), body)
            path = f"{MD.format(ns=namespace)}/resnet"
            wait_for(lambda: serves(client, namespace, SHA1, 1), timeout=30, what="revision 1")
            policy = refuse_events(client, namespace)
            client.patch(path, {"spec": {"checkpoint": V2}})
            wait_for(lambda: serves(client, namespace, SHA2, 2), timeout=15, what="revision 2")
            back = client.patch(path, {"spec": {"checkpoint": V1}})
            started = time.monotonic()
            wait_for(
                lambda: serves(client, namespace, SHA1, 3),
                timeout=15,
                what="revision 3 (the v1 checkpoint again) in model.json",
            )
            took = time.monotonic() - started
            status = wait_for(
                lambda: (
                    (st := client.get(path).get("status") or {}).get("observedGeneration")
                    == back["metadata"]["generation"]
                    and st
                ),
                timeout=15,
                what="observedGeneration of the last change",
            )
            assert status["revision"] == 3 and status["stable"]["sha256"] == SHA1
            assert [h["sha256"] for h in status["history"]] == [SHA1, SHA2, SHA1]
            print(f"\nchange back applied {took:.2f}s after the patch, every Event refused")
    finally:
        if policy:
            allow_events(client, policy)


def test_pods_that_cannot_run_say_why_in_status_and_kubectl(crd, namespace, tmp_path):
    """No node here: the scheduler leaves the pods Unschedulable. A RuntimeClass that
    does not exist: the API refuses the pods, the Deployment says FailedCreate. Each
    reason reaches the ModelDeployment's Progressing condition, status.message and
    `kubectl get modeldeployments -o wide` within 30 s."""
    client = crd.rest()
    missing_class = {**SPEC["runtime"], "runtimeClassName": "no-such-class"}
    specs = {"resnet": SPEC, "classless": {**SPEC, "runtime": missing_class}}
    with operator_process(crd, namespace, tmp_path / "operator.log"):
        for name, spec in specs.items():
            body = {
                "apiVersion": "hotswap.dev/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": name},
                "spec": spec,
            }
            client.post(MD.format(ns=namespace), body)
        reasons = {"resnet": "Unschedulable", "classless": "FailedCreate"}
        for name, reason in reasons.items():
            status = wait_for(
                lambda name=name, reason=reason: (
                    reason
                    in (
                        (
                            st := client.get(f"{MD.format(ns=namespace)}/{name}").get("status")
                            or {}
                        ).get("message")
                        or ""
                    )
                    and st
                ),
                timeout=30,
                what=f"{reason} in status.message of {name}",
            )
            progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
            assert progressing["status"] == "True" and reason in progressing["message"]
            available = next(c for c in status["conditions"] if c["type"] == "Available")
            assert available["status"] == "False"  # nothing answers
        assert "no-such-class" in status["message"]  # the API server's own words
        wide = crd.kubectl("get", "-n", namespace, "modeldeployments", "-o", "wide").stdout
        print(f"\n{wide}")
        header, *rows = wide.splitlines()
        assert "URL" in header and "MESSAGE" in header
        by_name = {row.split()[0]: row for row in rows}
        assert f"http://resnet.{namespace}.svc:" in by_name["resnet"]
        assert "Unschedulable" in by_name["resnet"] and "FailedCreate" in by_name["classless"]
