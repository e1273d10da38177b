"""The evaluation gate: top-1 accuracy on a labelled set, before new weights serve.

``spec.validation.evaluation`` names two tensor files pinned by sha256: ``inputs``
(float, ``[N, *inputShape]``) and ``labels`` (integer class indices, ``[N]``). Both are
fetched and read like validation tensors (bounded by the checkpoint limit, strict
readers), checked against each other and the model before a forward pass, and run in
batches of ``BATCH`` off the serving path. The serving revision's accuracy on the same
set is computed once (on a lease of the serving model) and kept, keyed by its revision
and the set's two sha256.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from hotswap_contract.redact import redact_uri
from hotswap_contract.wire import Checkpoint, Evaluation, EvaluationFigures, ModelSpec, Revision
from hotswap_runtime.checkpoint.weights import read_tensor
from hotswap_runtime.errors import ValidationFailed
from hotswap_runtime.swap.models import torch_dtype
from hotswap_runtime.swap.probes import forward

BATCH = 32  # samples per forward pass: bounds the activations
MAX_SAMPLES = 100_000
KEEP_SCORES = 16  # serving accuracies remembered
Fetch = Callable[[Checkpoint], Path]
Stream = torch.cuda.Stream | None
Key = tuple[int, str, str, str]  # serving revision, its sha256, inputs sha256, labels sha256


class EvaluationSet:
    """The checked inputs and labels of one evaluation."""

    def __init__(self, evaluation: Evaluation, model: ModelSpec, fetch: Fetch) -> None:
        self.spec = evaluation
        self.inputs = read_tensor(fetch(evaluation.inputs), evaluation.inputs.uri)
        self.labels = read_tensor(fetch(evaluation.labels), evaluation.labels.uri)
        _check(self.inputs, self.labels, evaluation, model)

    @property
    def samples(self) -> int:
        return int(self.labels.shape[0])

    def accuracy(
        self, module: nn.Module, model: ModelSpec, device: torch.device, stream: Stream
    ) -> float:
        correct = 0
        dtype = torch_dtype(model)
        for start in range(0, self.samples, BATCH):
            x = self.inputs[start : start + BATCH].to(dtype)
            out = forward(module, x, device, stream)
            if out.ndim != 2 or out.shape[0] != x.shape[0]:
                raise ValidationFailed(
                    f"evaluation: the model's output has shape {list(out.shape)} for a batch "
                    f"of {x.shape[0]}; an evaluation set needs a classifier's [batch, classes]"
                )
            correct += int((out.argmax(dim=1) == self.labels[start : start + BATCH]).sum())
        return correct / self.samples


class Scores:
    """Serving revisions' accuracies on evaluation sets, computed once each."""

    def __init__(self) -> None:
        self._kept: OrderedDict[Key, float] = OrderedDict()

    def get(self, key: Key, compute: Callable[[], float]) -> float:
        if key not in self._kept:
            self._kept[key] = compute()
            while len(self._kept) > KEEP_SCORES:
                self._kept.popitem(last=False)
        self._kept.move_to_end(key)
        return self._kept[key]


def key_of(serving: Revision, evaluation: Evaluation) -> Key:
    return (
        serving.revision,
        serving.checkpoint.sha256,
        evaluation.inputs.sha256,
        evaluation.labels.sha256,
    )


def judge(
    revision: Revision, accuracy: float, samples: int, serving: tuple[int, float] | None
) -> tuple[EvaluationFigures, str | None]:
    """The figures of ``revision``, and why it fails the gate (None when it passes)."""
    evaluation = revision.validation.evaluation if revision.validation else None
    assert evaluation is not None
    reason = _shortfall(revision.revision, evaluation, accuracy, samples, serving)
    figures = EvaluationFigures(
        revision=revision.revision,
        samples=samples,
        accuracy=round(accuracy, 6),
        servingRevision=serving[0] if serving else None,
        servingAccuracy=round(serving[1], 6) if serving else None,
        passed=reason is None,
    )
    return figures, reason


def _shortfall(
    number: int,
    evaluation: Evaluation,
    accuracy: float,
    samples: int,
    serving: tuple[int, float] | None,
) -> str | None:
    head = f"revision {number}: accuracy {accuracy:.4f} on the {samples}-sample evaluation set"
    floor = evaluation.min_accuracy
    if floor is not None and accuracy < floor:
        return f"{head} is below spec.validation.evaluation.minAccuracy {floor:g}"
    allowed = evaluation.max_regression
    if serving is not None and allowed is not None and accuracy < serving[1] - allowed:
        return (
            f"{head} is below serving revision {serving[0]}'s {serving[1]:.4f} minus "
            f"spec.validation.evaluation.maxRegression {allowed:g}"
        )
    return None


def _check(x: torch.Tensor, y: torch.Tensor, evaluation: Evaluation, model: ModelSpec) -> None:
    inputs, labels = redact_uri(evaluation.inputs.uri), redact_uri(evaluation.labels.uri)
    if not x.is_floating_point() or tuple(x.shape[1:]) != model.input_shape:
        wanted = ", ".join(map(str, model.input_shape))
        raise ValidationFailed(
            f"evaluation inputs {inputs}: a float tensor [N, {wanted}] is needed, not "
            f"{str(x.dtype).removeprefix('torch.')} {list(x.shape)}"
        )
    if y.ndim != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValidationFailed(
            f"evaluation labels {labels}: an integer tensor [N] of class indices is needed, "
            f"not {str(y.dtype).removeprefix('torch.')} {list(y.shape)}"
        )
    if not 1 <= y.shape[0] <= MAX_SAMPLES or x.shape[0] != y.shape[0]:
        raise ValidationFailed(
            f"evaluation set: {x.shape[0]} inputs and {y.shape[0]} labels; both must count "
            f"the same number of samples, 1 to {MAX_SAMPLES}"
        )
