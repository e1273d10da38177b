"""Judging new weights before they serve: the evaluation gate, the shadow comparison on
sampled live answers, and the sequential test that decides it."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from devcluster import checkpoints, tiny
from hotswap_contract.wire import Revision
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.errors import EvaluationFailed, ShadowRefused, Superseded
from hotswap_runtime.swap.sequential import SequentialTest, Verdict
from hotswap_runtime.swap.swapper import Swapper

torch.set_num_threads(1)


# ---- the sequential test -------------------------------------------------------------


def run_test(
    rate: float, p1: float, rng: random.Random, max_samples: int = 5000
) -> tuple[Verdict, int]:
    test = SequentialTest(p1, max_samples)
    while True:
        verdict = test.add(int(rng.random() < rate), 1)
        if verdict is not Verdict.CONTINUE:
            return verdict, test.samples


def test_no_disagreement_passes_after_the_stated_number_of_samples() -> None:
    test = SequentialTest(0.01, 5000)
    needed = test.passing_samples()
    assert 300 < needed < 450
    for _ in range(needed - 1):
        assert test.add(0, 1) is Verdict.CONTINUE
    assert test.add(0, 1) is Verdict.PASS


def test_error_rates_hold_where_the_docs_say() -> None:
    rng = random.Random(7)
    at_p0 = [run_test(0.002, 0.01, rng)[0] for _ in range(400)]
    refused = sum(v is Verdict.REFUSE for v in at_p0) / len(at_p0)
    assert refused <= 0.03  # alpha is 1%; 400 runs leave room for chance
    at_p1 = [run_test(0.01, 0.01, rng)[0] for _ in range(400)]
    passed = sum(v is Verdict.PASS for v in at_p1) / len(at_p1)
    assert passed <= 0.10  # beta is 5%
    five = [run_test(0.05, 0.01, rng) for _ in range(200)]
    assert all(v is Verdict.REFUSE for v, _ in five)
    assert sorted(n for _, n in five)[100] < 150  # median samples to refuse 5%


def test_truncation_decides_by_the_observed_rate() -> None:
    test = SequentialTest(0.01, 50)
    assert test.add(0, 49) is Verdict.CONTINUE
    assert test.add(0, 1) is Verdict.PASS
    test = SequentialTest(0.3, 10)
    assert test.add(2, 10) in (Verdict.REFUSE, Verdict.PASS)


# ---- revisions ------------------------------------------------------------------------


@pytest.fixture
def swapper(tmp_path: Path) -> Swapper:
    store = CheckpointStore(tmp_path / "cache", 1 << 30, 1 << 30, file_roots=(str(tmp_path),))
    return Swapper(store, torch.device("cpu"), tiny.ALLOWED)


def artifact(tmp: Path, name: str, tensor: torch.Tensor) -> dict[str, str]:
    path = tmp / f"{name}.safetensors"
    return {"uri": path.as_uri(), "sha256": checkpoints.save({"t": tensor}, path)}


def revision(tmp: Path, number: int, seed: int, **extra: Any) -> Revision:
    path = tmp / f"w{number}-{seed}.safetensors"
    sha = checkpoints.save(tiny.weights(seed), path)
    return Revision.model_validate({**checkpoints.revision(number, path.as_uri(), sha), **extra})


INPUTS = torch.randint(-3, 4, (64, tiny.FEATURES), generator=torch.Generator().manual_seed(3))


def evaluation(tmp: Path, labels_seed: int, **bounds: float) -> dict[str, Any]:
    labels = tiny.expected(tiny.weights(labels_seed), INPUTS.float()).argmax(dim=1)
    return {
        "evaluation": {
            "inputs": artifact(tmp, "inputs", INPUTS.float()),
            "labels": artifact(tmp, f"labels{labels_seed}", labels),
            **bounds,
        }
    }


def accuracy(seed: int, labels_seed: int) -> float:
    labels = tiny.expected(tiny.weights(labels_seed), INPUTS.float()).argmax(dim=1)
    got = tiny.expected(tiny.weights(seed), INPUTS.float()).argmax(dim=1)
    return float((got == labels).float().mean())


def test_evaluation_figures_are_reported_when_it_passes(swapper: Swapper, tmp_path: Path) -> None:
    swapper.swap_to(revision(tmp_path, 1, 1, validation=evaluation(tmp_path, 1, minAccuracy=0.9)))
    found = swapper.analysis()
    assert found is not None and found.evaluation is not None
    assert found.evaluation.accuracy == 1.0 and found.evaluation.passed
    assert found.evaluation.samples == 64 and found.evaluation.serving_accuracy is None


def test_a_regression_against_the_serving_revision_is_refused_with_both_figures(
    swapper: Swapper, tmp_path: Path
) -> None:
    check = evaluation(tmp_path, 1, maxRegression=0.05)
    swapper.swap_to(revision(tmp_path, 1, 1, validation=check))
    worse = accuracy(2, 1)
    assert worse < 0.95  # seed 2 answers differently on these inputs
    with pytest.raises(EvaluationFailed, match=r"accuracy 0\.\d+ .* below serving revision 1's"):
        swapper.swap_to(revision(tmp_path, 2, 2, validation=check))
    current = swapper.current()
    assert current is not None and current.revision.revision == 1
    found = swapper.analysis()
    assert found is not None and found.evaluation is not None
    assert found.evaluation.accuracy == pytest.approx(worse, abs=1e-6)
    assert found.evaluation.serving_accuracy == 1.0 and not found.evaluation.passed
    swapper.swap_to(revision(tmp_path, 3, 1, validation=check))  # as good: passes
    current = swapper.current()
    assert current is not None and current.revision.revision == 3


def test_the_accuracy_floor_refuses_a_first_revision(swapper: Swapper, tmp_path: Path) -> None:
    with pytest.raises(EvaluationFailed, match=r"below spec\.validation\.evaluation\.minAccuracy"):
        swapper.swap_to(
            revision(tmp_path, 1, 2, validation=evaluation(tmp_path, 1, minAccuracy=0.99))
        )
    assert swapper.current() is None


def test_labels_that_do_not_fit_the_inputs_are_refused(swapper: Swapper, tmp_path: Path) -> None:
    check = evaluation(tmp_path, 1, minAccuracy=0.5)
    check["evaluation"]["labels"] = artifact(tmp_path, "short", torch.zeros(5, dtype=torch.int64))
    with pytest.raises(Exception, match="64 inputs and 5 labels"):
        swapper.swap_to(revision(tmp_path, 1, 1, validation=check))


# ---- shadow comparison ----------------------------------------------------------------


class Traffic:
    """Plays the inference engine: answers inputs with the serving model and offers each
    answered batch to the tap; ``flip`` of the answers get another top-1 class."""

    def __init__(self, swapper: Swapper, flip: float) -> None:
        self.swapper = swapper
        self.flip = flip
        self.stop = threading.Event()
        self.rng = random.Random(11)
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        g = torch.Generator().manual_seed(5)
        while not self.stop.is_set():
            x = torch.randint(-3, 4, (1, tiny.FEATURES), generator=g).float()
            with self.swapper.lease() as model, torch.inference_mode():
                y = model.module(x)
                version = str(model.revision.revision)
            if self.rng.random() < self.flip:  # as if the weights answered another class
                y = y.roll(1, dims=1) + 100 * torch.nn.functional.one_hot(
                    (y.argmax(1) + 1) % tiny.CLASSES, tiny.CLASSES
                )
            self.swapper.tap.offer(version, x, y)
            self.stop.wait(0.001)


@pytest.fixture
def traffic(swapper: Swapper) -> Iterator[Traffic]:
    made: list[Traffic] = []

    def start(flip: float) -> Traffic:
        t = Traffic(swapper, flip)
        t.thread.start()
        made.append(t)
        return t

    yield start  # type: ignore[misc]
    for t in made:
        t.stop.set()
        t.thread.join(5)


def shadow(**spec: Any) -> dict[str, Any]:
    return {"analysis": {"shadow": {"metric": "top1", "maxDisagreement": 0.01, **spec}}}


def test_identical_answers_pass_the_shadow_comparison(
    swapper: Swapper, tmp_path: Path, traffic: Any
) -> None:
    swapper.swap_to(revision(tmp_path, 1, 1))
    traffic(0.0)
    swapper.swap_to(revision(tmp_path, 2, 1, **shadow()))
    found = swapper.analysis()
    assert found is not None and found.shadow is not None
    assert found.shadow.decision == "Passed" and found.shadow.disagreements == 0
    assert found.shadow.samples >= 300
    current = swapper.current()
    assert current is not None and current.revision.revision == 2


def test_ten_percent_disagreement_is_refused_and_the_old_revision_serves(
    swapper: Swapper, tmp_path: Path, traffic: Any
) -> None:
    swapper.swap_to(revision(tmp_path, 1, 1))
    traffic(0.10)
    with pytest.raises(ShadowRefused, match=r"disagree with serving revision 1 by top1"):
        swapper.swap_to(revision(tmp_path, 2, 1, **shadow()))
    current = swapper.current()
    assert current is not None and current.revision.revision == 1
    found = swapper.analysis()
    assert found is not None and found.shadow is not None
    assert found.shadow.decision == "Failed" and found.shadow.disagreements > 0
    assert found.shadow.rate > 0.02


def test_without_traffic_the_spec_chooses_to_activate(swapper: Swapper, tmp_path: Path) -> None:
    swapper.swap_to(revision(tmp_path, 1, 1))
    swapper.swap_to(revision(tmp_path, 2, 1, **shadow(timeoutSeconds=1, onTimeout="Activate")))
    found = swapper.analysis()
    assert found is not None and found.shadow is not None
    assert found.shadow.decision == "Activated" and found.shadow.samples == 0
    current = swapper.current()
    assert current is not None and current.revision.revision == 2


def test_without_traffic_the_spec_chooses_to_wait_and_says_so(
    swapper: Swapper, tmp_path: Path
) -> None:
    swapper.swap_to(revision(tmp_path, 1, 1))
    waiting = threading.Event()

    def progress() -> None:
        found = swapper.analysis()
        if found is not None and found.shadow is not None and found.shadow.decision == "Waiting":
            waiting.set()

    with pytest.raises(Superseded):
        swapper.swap_to(
            revision(tmp_path, 2, 1, **shadow(timeoutSeconds=1, onTimeout="Wait")),
            cancelled=waiting.is_set,
            progress=progress,
        )
    current = swapper.current()
    assert current is not None and current.revision.revision == 1


def test_a_rollback_to_an_older_revision_is_not_compared(swapper: Swapper, tmp_path: Path) -> None:
    swapper.swap_to(revision(tmp_path, 2, 2))
    swapper.swap_to(revision(tmp_path, 1, 1, **shadow(timeoutSeconds=3600)))
    found = swapper.analysis()
    assert found is not None and found.shadow is not None and found.shadow.decision == "Skipped"
    current = swapper.current()
    assert current is not None and current.revision.revision == 1


def test_rows_the_new_weights_answer_with_nan_or_infinity_disagree() -> None:
    from hotswap_contract.wire import Shadow
    from hotswap_runtime.swap.shadow import Comparison, disagreements

    serving = torch.tensor([[1.0, 2.0], [3.0, 1.0], [0.0, 1.0]])
    candidate = torch.tensor([[1.0, 2.0], [float("nan"), 1.0], [0.0, float("inf")]])
    for metric in ("top1", "maxAbsDiff", "totalVariation"):
        assert disagreements(serving, candidate, metric, 1e-3).tolist() == [False, True, True]
    comparison = Comparison.start(2, Shadow())
    comparison.score(serving, torch.zeros(3, 5))  # another shape: every row disagrees
    assert (comparison.test.samples, comparison.test.disagreements) == (3, 3)
