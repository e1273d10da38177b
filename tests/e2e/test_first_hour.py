"""A platform engineer's first hour, end to end on the real node: pods that cannot run
say why, in the ModelDeployment's status and `kubectl get modeldeployments -o wide`,
in the scheduler's and the kubelet's own words, within 30 s; `kubectl port-forward` to a
pod or the Service reaches the model from the host; examples/quickstart.yaml serves and
swaps as written, with the chart's default policy.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from devcluster import checkpoints, tiny
from devcluster.cluster import REPO
from devcluster.fleet import Fleet, cpu_deployment, infer_body
from devcluster.waiting import wait_for
from examples.checkpoints import pod_uri
from hotswap_contract.wire import GRPC_PORT, HTTP_PORT
from tests.fixtures_runtime import clients

SHAPE = (tiny.FEATURES,)
QUICKSTART_SHAPE = (3, 32, 32)  # examples/quickstart.yaml's inputShape
MISSING_IMAGE = "localhost/hotswap-no-such-image:1"  # allowed by policy, never built
REACHED = "reach"  # the ModelDeployment `helm test` sends its request to
HELM_SETS = (f"policy.images={{{MISSING_IMAGE}}}", f"test.modelDeployment={REACHED}")


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


FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)")


@contextlib.contextmanager
def port_forward(cluster, namespace: str, target: str) -> Iterator[dict[int, int]]:
    """`kubectl port-forward TARGET :8080 :8081` as a user runs it: the local port of
    each remote one, once kubectl says it forwards them."""
    if cluster._kubectl is None:
        cluster.kubectl("version", "--client")  # finds the binary
    cmd = [*cluster._kubectl, "--kubeconfig", str(cluster.kubeconfig), "port-forward"]
    cmd += ["-n", namespace, target, f":{HTTP_PORT}", f":{GRPC_PORT}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ports: dict[int, int] = {}
    try:
        assert proc.stdout is not None
        while len(ports) < 2:
            line = proc.stdout.readline()
            assert line, f"kubectl port-forward {target} ended: rc {proc.wait(timeout=10)}"
            if found := FORWARDING.search(line):
                ports[int(found[2])] = int(found[1])
        yield ports
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def triton_grpc(target: str, model: str) -> dict:
    """tritonclient's gRPC client at its defaults, in a process of its own (its protobuf
    package `inference` cannot share a process with the runtime's: clients.py)."""
    return clients.ask("triton-grpc", "", target, model, [[0.5] * SHAPE[0]])


def test_port_forward_and_helm_test_reach_the_model(cluster, installed, helm_bin, v1):
    """What a user does first: `helm test` (one request through the Service), then from
    a laptop port-forward to a pod and to the Service, and an inference request over
    REST and over gRPC (tritonclient)."""
    name = REACHED
    fleet = Fleet(cluster, installed, name)
    fleet.deploy(cpu_deployment(name, 1, tiny.ARCHITECTURE, SHAPE, v1), timeout=300)
    (pod,) = [p["metadata"]["name"] for p in fleet.pods()]
    helm_test = ["test", "hotswap", "-n", installed, "--logs", "--timeout", "180s"]
    tested = subprocess.run(
        [str(helm_bin), *helm_test, "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    print(f"\n$ helm test hotswap --logs\n{tested.stdout}{tested.stderr}")
    assert tested.returncode == 0 and f"ok: {name}" in tested.stdout
    for target in (f"pod/{pod}", f"service/{name}"):
        with port_forward(cluster, installed, target) as ports:
            url = f"http://127.0.0.1:{ports[HTTP_PORT]}/v2/models/{name}/infer"
            reply = httpx.post(url, json=infer_body(SHAPE), timeout=30)
            assert reply.status_code == 200, reply.text
            assert reply.json()["model_version"] == "1"
            answer = triton_grpc(f"127.0.0.1:{ports[GRPC_PORT]}", name)
            assert answer["version"] == "1" and len(answer["output"]) == 1
        print(f"\nport-forward {target}: REST and gRPC answered from 127.0.0.1")
    cluster.kubectl("delete", "modeldeployment", name, "-n", installed, "--wait=false")


def test_the_quickstart_serves_and_swaps_as_written(cluster, installed):
    """examples/quickstart.yaml on an install with the chart's default policy: applied
    as written, its two pods serve v1 from the runtime image's own checkpoints; the
    `kubectl patch` of its comments swaps both to v2 under traffic, with no failed
    request and no pod restarted."""
    path = REPO / "examples" / "quickstart.yaml"
    (patch,) = [
        shlex.split(line.removeprefix("#").strip())
        for line in path.read_text().splitlines()
        if line.startswith("#   kubectl patch modeldeployment quickstart")
    ]
    fleet = Fleet(cluster, installed, "quickstart")
    cluster.kubectl("apply", "-n", installed, "-f", str(path))
    fleet.wait_serving(1, 2, timeout=300)
    pods = {p["metadata"]["uid"] for p in fleet.pods()}
    with fleet.load(QUICKSTART_SHAPE) as load:
        cluster.kubectl(*patch[1:], "-n", installed)
        status = fleet.wait_serving(2, 2, timeout=300)
        wait_for(lambda: load.versions["2"] > 0, timeout=60, what="an answer from v2")
    print(f"\nquickstart: answers by revision {dict(load.versions)}, failed {len(load.failures)}")
    assert load.failures == [] and load.versions["1"] > 0
    assert {p["metadata"]["uid"] for p in fleet.pods()} == pods  # swapped, not restarted
    assert condition(status, "Available")["status"] == "True"
    cluster.kubectl("delete", "modeldeployment", "quickstart", "-n", installed, "--wait=false")
