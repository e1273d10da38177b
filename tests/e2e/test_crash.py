"""A checkpoint that kills the loading process cannot crash-loop the fleet.

Three pods of the tiny test model's fragile variant (its process dies with SIGKILL when
its weights say so, as an OOM kill or a fatal native error would), AllAtOnce. Every
pod dies loading revision 2 and is restarted once by the kubelet; each then refuses
revision 2 (its load journal, in the cache volume, says it crashed), serves revision 1
again from its checkpoint cache, and says why; the ModelDeployment is Degraded with
the cause, and a good revision 3 afterwards swaps in without another restart.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import torch

from devcluster import checkpoints, tiny
from devcluster.fleet import Fleet, cpu_deployment, pod_ids
from examples.checkpoints import pod_uri

NAME = "fragile"
REPLICAS = 3
SHAPE = (tiny.FEATURES,)


@pytest.fixture(scope="module")
def files() -> Iterator[dict[str, dict[str, str]]]:
    folder = checkpoints.local_folder("crash")
    weights: dict[str, dict[str, torch.Tensor]] = {
        "v1": tiny.weights(1),
        "crash": tiny.crashing_weights(),
        "v3": tiny.weights(3),
    }
    out = {}
    for name, state in weights.items():
        path = folder / f"{name}.safetensors"
        out[name] = {"uri": pod_uri(path), "sha256": checkpoints.save(state, path)}
    yield out
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def fleet(cluster, node, installed, files) -> Fleet:
    md = cpu_deployment(
        NAME, REPLICAS, tiny.FRAGILE, SHAPE, files["v1"], rollout={"strategy": "AllAtOnce"}
    )
    return Fleet(cluster, installed, NAME).deploy(md, timeout=300)


def restarts(fleet: Fleet) -> dict[str, int]:
    ids = pod_ids(fleet)
    return {name: count for name, (_, _, count) in ids.items()}


def test_a_checkpoint_that_kills_the_loader_restarts_each_pod_once(fleet, files):
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in fleet.pods()}
    assert set(restarts(fleet).values()) == {0}
    fleet.patch_spec({"checkpoint": files["crash"]})

    def refused_everywhere(status) -> bool:
        reports = status["pods"]  # each pod's ModelReplica (Fleet.view)
        return (
            status.get("phase") == "Degraded"
            and status.get("ready") == f"{REPLICAS}/{REPLICAS}"
            and len(reports) == REPLICAS
            and all(
                r.get("state") == "Failed"
                and r.get("revision") == 1
                and r.get("targetRevision") == 2
                for r in reports.values()
            )
        )

    status = fleet.wait(refused_everywhere, "every pod back on revision 1, refusing 2", 300)
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert "crashed while loading revision 2" in degraded["message"]
    for pod, report in status["pods"].items():
        assert "crashed while loading revision 2" in report["message"], pod
    after = restarts(fleet)
    assert after == dict.fromkeys(uids, 1), after  # one restart each, then no more
    assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in fleet.pods()} == uids
    with fleet.load(SHAPE, clients=1) as load:
        load.all_answer("1")
    assert not load.failures, load.summary()

    fleet.patch_spec({"checkpoint": files["v3"]})
    fleet.wait_serving(3, REPLICAS, timeout=120)
    assert restarts(fleet) == after
