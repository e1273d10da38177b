"""Bring your own model, as docs/bring-your-own-model.md says: examples/byo's Dockerfile
builds an image FROM the runtime image with the user's module; the chart's policy allows
that image and module; a ModelDeployment serves it on the real node and swaps its weights
under load, answering what the user's own network computes."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator

import httpx
import pytest
import torch

from devcluster import checkpoints
from devcluster import node as real
from devcluster.cluster import REPO
from devcluster.fleet import Fleet, cpu_deployment, infer_body
from examples.checkpoints import pod_uri

BYO = REPO / "examples" / "byo"
IMAGE = "localhost/my-model-runtime:e2e"
ARCHITECTURE = "python/my_models.classifier:make"
HELM_SETS = (f"policy.images={{{IMAGE}}}", "policy.architectures={torchvision,python/my_models}")
NAME = "byo"
SHAPE = (8,)


def user_module():
    sys.path.insert(0, str(BYO))
    try:
        from my_models import classifier  # the user's module, as the image ships it
    finally:
        sys.path.remove(str(BYO))
    return classifier


@pytest.fixture(scope="module")
def image(node) -> str:
    """The user's image, built as the guide says, then in the node's containerd."""
    real._run(
        *real.PODMAN,
        "build",
        "-q",
        "--build-arg",
        f"RUNTIME_IMAGE={real.RUNTIME_IMAGE}",
        "-t",
        IMAGE,
        str(BYO),
    )
    node.load_images([IMAGE])
    return IMAGE


@pytest.fixture(scope="module")
def weights() -> Iterator[dict[int, tuple[dict[str, str], torch.nn.Module]]]:
    """Two revisions of the user's network: the checkpoint each is saved to, and the
    network itself to compute the expected answers."""
    classifier = user_module()
    folder = checkpoints.local_folder("byo")
    out = {}
    for version in (1, 2):
        torch.manual_seed(version)
        network = classifier.make().eval()
        path = folder / f"v{version}.safetensors"
        sha = checkpoints.save(network.state_dict(), path)
        out[version] = ({"uri": pod_uri(path), "sha256": sha}, network)
    yield out
    shutil.rmtree(folder, ignore_errors=True)


def answer(service: str) -> tuple[str, list[float]]:
    reply = httpx.post(f"http://{service}/v2/models/{NAME}/infer", json=infer_body(SHAPE))
    reply.raise_for_status()
    body = reply.json()
    return body["model_version"], body["outputs"][0]["data"]


def expected(network: torch.nn.Module) -> list[float]:
    with torch.no_grad():
        return network(torch.full((1, *SHAPE), 0.5)).flatten().tolist()


def test_a_model_of_ones_own_serves_and_swaps(cluster, installed, image, weights):
    md = cpu_deployment(NAME, 2, ARCHITECTURE, SHAPE, weights[1][0], runtime={"image": image})
    fleet = Fleet(cluster, installed, NAME).deploy(md, timeout=300)
    service = fleet.wait_routable()
    version, outputs = answer(service)
    assert version == "1" and outputs == pytest.approx(expected(weights[1][1]), abs=1e-5)
    with fleet.load(SHAPE) as load:
        fleet.patch_spec({"checkpoint": weights[2][0]})
        fleet.wait_serving(2, 2)
        load.all_answer("2")
    assert not load.failures, load.summary()
    version, outputs = answer(service)
    assert version == "2" and outputs == pytest.approx(expected(weights[2][1]), abs=1e-5)
    pods = fleet.pods()
    assert {c["image"] for p in pods for c in p["spec"]["containers"]} == {image}
    print(f"\n{load.total} requests during the swap, 0 failed; image {image}")
