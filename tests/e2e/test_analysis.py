"""Judging new weights on the real node (docs/analysis.md): an evaluation set refuses a
checkpoint whose accuracy fell, and the shadow comparison refuses one that flips top-1
on a tenth of the live traffic, while clients never get an answer from it.

One helm install and one 2-replica ModelDeployment of the runtime's own
``python/hotswap_runtime.examples:mlp`` serve the module; tests run in file order, each
from the revision the last one left. The weights come from devcluster/disagreeing.py:
the disagreeing ones answer exactly like the serving ones except on trigger inputs.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from devcluster import checkpoints, disagreeing
from devcluster.fleet import Fleet, cpu_deployment
from examples.checkpoints import pod_uri

NAME = "judged"
REPLICAS = 2
HIDDEN, LAYERS = 64, 1
SHAPE = (disagreeing.FEATURES,)
JSON = dict[str, Any]


@pytest.fixture(scope="module")
def files() -> Iterator[dict[str, JSON]]:
    """Checkpoints (truth, disagreeing, truth saved again) and an evaluation set whose
    labels are the truth's answers, 40% of its inputs triggers: name -> {uri, sha256}."""
    folder = checkpoints.local_folder("analysis")
    truth = disagreeing.serving(HIDDEN, LAYERS)
    out: dict[str, JSON] = {}

    def save(name: str, state: dict[str, torch.Tensor]) -> None:
        path = folder / f"{name}.safetensors"
        out[name] = {"uri": pod_uri(path), "sha256": checkpoints.save(state, path)}

    save("truth", truth)
    save("flips", disagreeing.disagreeing(truth))
    save("truth-again", truth)
    save("flips-shadow", disagreeing.disagreeing(truth))
    save("flips-again", disagreeing.disagreeing(truth))
    x = disagreeing.inputs(truth, 200, 0.4, HIDDEN, LAYERS, seed=3)
    save("eval-inputs", {"t": x})
    save("eval-labels", {"t": disagreeing.answers(truth, x, HIDDEN, LAYERS).argmax(dim=1)})
    out["traffic"] = {"x": disagreeing.inputs(truth, 200, 0.1, HIDDEN, LAYERS, seed=4)}
    yield out
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def fleet(cluster, node, installed, files) -> Fleet:
    manifest = cpu_deployment(
        NAME,
        REPLICAS,
        disagreeing.ARCHITECTURE,
        SHAPE,
        files["truth"],
        **{"validation": evaluation(files)},
    )
    manifest["spec"]["model"]["args"] = disagreeing.args(HIDDEN, LAYERS)
    return Fleet(cluster, installed, NAME).deploy(manifest, timeout=420)


def evaluation(files: dict[str, JSON]) -> JSON:
    return {
        "evaluation": {
            "inputs": files["eval-inputs"],
            "labels": files["eval-labels"],
            "maxRegression": 0.05,
        }
    }


def bodies(x: torch.Tensor) -> list[JSON]:
    return [
        {"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": row}]}
        for row in x.tolist()
    ]


def degraded_message(fleet: Fleet) -> str:
    status = fleet.status()
    conditions = {c["type"]: c for c in status.get("conditions", [])}
    return str(conditions.get("Degraded", {}).get("message", ""))


def test_an_accuracy_regression_is_refused_with_both_figures(fleet: Fleet, files) -> None:
    first = fleet.status()["revision"]
    fleet.patch_spec({"checkpoint": files["flips"]})
    st = fleet.wait(
        lambda s: s.get("phase") == "Degraded" and "evaluation set" in degraded_message(fleet),
        "the regression refused",
        timeout=240,
    )
    message = degraded_message(fleet)
    assert f"below serving revision {first}'s 1.0000" in message, message
    assert "accuracy 0.6000 on the 200-sample evaluation set" in message, message
    for name, report in fleet.reports().items():
        figures = report["analysis"]["evaluation"]
        assert figures["accuracy"] == pytest.approx(0.6) and not figures["passed"], name
        assert figures["servingAccuracy"] == 1.0 and figures["servingRevision"] == first, name
        assert report["revision"] == first, name  # still serving the previous revision
    assert st["serving"] == str(first)
    fleet.patch_spec({"checkpoint": files["truth-again"]})  # as good as what serves: passes
    fleet.wait_serving(first + 2, REPLICAS, timeout=240)
    for name, report in fleet.reports().items():
        assert report["analysis"]["evaluation"]["passed"], name


def test_a_shadow_refusal_under_traffic_keeps_every_answer_on_the_old_weights(
    fleet: Fleet, files
) -> None:
    fleet.patch_spec({"validation": None})  # from here the shadow comparison alone judges
    serving = fleet.status()["revision"] + 1
    fleet.wait_serving(serving, REPLICAS, timeout=240)
    fleet.patch_spec({"analysis": {"shadow": {"maxDisagreement": 0.01, "timeoutSeconds": 240}}})
    assert fleet.status()["revision"] == serving  # analysis settings make no revision
    with fleet.load(SHAPE, bodies=bodies(files["traffic"]["x"])) as load:
        load.all_answer(str(serving))
        fleet.patch_spec({"checkpoint": files["flips-shadow"]})
        fleet.wait(
            lambda s: (
                s.get("phase") == "Degraded"
                and all(
                    r.get("state") == "Failed" and r.get("targetRevision") == serving + 1
                    for r in fleet.reports().values()
                )
            ),
            "every pod refusing the disagreeing weights",
            timeout=300,
        )
        load.wait_answers(20)
    assert not load.failures, load.summary()
    assert set(load.versions) == {str(serving)}, load.versions  # no answer from the bad weights
    message = degraded_message(fleet)
    assert "shadow comparison refused it" in message and "by top1" in message, message
    for name, report in fleet.reports().items():
        shadow = report["analysis"]["shadow"]
        assert shadow["decision"] == "Failed" and shadow["revision"] == serving + 1, name
        assert shadow["disagreements"] / shadow["samples"] > 0.02, name
        assert report["revision"] == serving, name

    # the same bytes with the shadow off go live (another file: a new revision)
    fleet.patch_spec({"analysis": None, "checkpoint": files["flips-again"]})
    status = fleet.wait_serving(serving + 2, REPLICAS, timeout=240)
    assert status["serving"] == str(serving + 2)
    with fleet.load(SHAPE, bodies=bodies(files["traffic"]["x"])) as load:
        load.all_answer(str(serving + 2))
        load.wait_answers(20)
    assert not load.failures, load.summary()
