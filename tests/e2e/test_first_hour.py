"""A platform engineer's first hour, end to end on the real node: pods that cannot run
say why, in the ModelDeployment's status and `kubectl get modeldeployments -o wide`,
in the scheduler's and the kubelet's own words, within 30 s.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from devcluster import checkpoints, tiny
from devcluster.fleet import Fleet, cpu_deployment
from examples.checkpoints import pod_uri

SHAPE = (tiny.FEATURES,)
MISSING_IMAGE = "localhost/hotswap-no-such-image:1"  # allowed by policy, never built
HELM_SETS = (f"policy.images={{{MISSING_IMAGE}}}",)


@pytest.fixture(scope="module")
def v1() -> Iterator[dict[str, str]]:
    folder = checkpoints.local_folder("first-hour")
    path = folder / "v1.safetensors"
    yield {"uri": pod_uri(path), "sha256": checkpoints.save(tiny.weights(1), path)}
    shutil.rmtree(folder, ignore_errors=True)


def condition(status: dict, kind: str) -> dict:
    return next(c for c in status.get("conditions") or [] if c["type"] == kind)


@pytest.mark.parametrize(
    "name, runtime, reason",
    [
        # a resource no node has: the scheduler's "0/1 nodes are available" message
        ("greedy", {"resources": {"limits": {"example.com/widget": "1"}}}, "Unschedulable"),
        ("unpulled", {"image": MISSING_IMAGE}, "Err"),  # ErrImagePull, then ImagePullBackOff
    ],
)
def test_pods_that_cannot_run_say_why_within_30s(
    cluster, node, installed, v1, name, runtime, reason
):
    fleet = Fleet(cluster, installed, name)
    fleet.apply(cpu_deployment(name, 1, tiny.ARCHITECTURE, SHAPE, v1, runtime=runtime))
    status = fleet.wait(
        lambda st: reason in (st.get("message") or ""),
        what=f"{reason} in status.message of {name}",
        timeout=30,
    )
    progressing = condition(status, "Progressing")
    assert progressing["status"] == "True" and reason in progressing["message"]
    assert condition(status, "Available")["status"] == "False"
    wide = cluster.kubectl("get", "modeldeployments", "-n", installed, "-o", "wide").stdout
    print(f"\n{wide}")
    (row,) = [line for line in wide.splitlines() if line.split()[0] == name]
    assert reason in row
    if name == "unpulled":
        assert MISSING_IMAGE in status["message"]  # the kubelet's words name the image
    else:
        assert "example.com/widget" in status["message"]
    fleet.cluster.kubectl("delete", "modeldeployment", name, "-n", installed, "--wait=false")
