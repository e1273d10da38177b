"""Domain exceptions of the runtime and the one table mapping them to HTTP codes.

Two families:

* request errors (``InvalidInput``, ``RequestTooLarge``, ``Overloaded``,
  ``BodyTooSlow``, ``RequestTimeout``, ``ModelNotFound``, ``VersionConflict``,
  ``ModelNotReady``) answer a REST or gRPC request; ``STATUS`` maps each to its HTTP
  code and gRPC status name, the one table both servers read.
* swap errors (``SwapError`` and subclasses) explain why a revision could not be made
  to serve. They never reach a client: the old model keeps serving and the reason shows
  in model metadata, metrics and the pod report. ``code`` is the short label used in
  metrics; ``transient`` says whether retrying the same revision later may succeed.
"""

# ruff: noqa: N818  (KServe-style names: InvalidInput, ModelNotFound, ...)
from __future__ import annotations


class HotswapError(Exception):
    """Base of every runtime error; the message says what failed and what to do."""

    code = "error"


class InvalidInput(HotswapError):
    """The inference request is malformed (shape, datatype, JSON layout)."""

    code = "invalid_input"


class RequestTooLarge(HotswapError):
    """The request body is over the size limit, or needs more memory to decode than
    the runtime lets requests hold at once."""

    code = "too_large"


class Overloaded(HotswapError):
    """The request memory stayed spent by other requests for the whole admission wait."""

    code = "overloaded"


class BodyTooSlow(HotswapError):
    """The request body did not arrive within its deadline or at the minimum rate."""

    code = "body_too_slow"


class RequestTimeout(HotswapError):
    """The request did not arrive whole within the time the runtime gives it."""

    code = "timeout"


class ModelNotFound(HotswapError):
    """The request names a model this runtime does not serve."""

    code = "model_not_found"


class VersionConflict(HotswapError):
    """The request asks for a model version that is not the one serving now."""

    code = "version_conflict"


class InferenceFailed(HotswapError):
    """The model raised on a request that passed every check: a server-side failure."""

    code = "inference_failed"


class ModelNotReady(HotswapError):
    """No model is loaded yet."""

    code = "model_not_ready"


# exception -> (HTTP code, gRPC status name)
STATUS: dict[type[HotswapError], tuple[int, str]] = {
    InvalidInput: (400, "INVALID_ARGUMENT"),
    ModelNotFound: (404, "NOT_FOUND"),
    VersionConflict: (409, "FAILED_PRECONDITION"),
    RequestTooLarge: (413, "RESOURCE_EXHAUSTED"),
    Overloaded: (503, "RESOURCE_EXHAUSTED"),
    BodyTooSlow: (408, "DEADLINE_EXCEEDED"),
    RequestTimeout: (408, "DEADLINE_EXCEEDED"),
    ModelNotReady: (503, "UNAVAILABLE"),
    InferenceFailed: (500, "INTERNAL"),
}


def _entry(exc: HotswapError) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return (500, "INTERNAL")


def http_status(exc: HotswapError) -> int:
    """The HTTP code for ``exc``: the entry of its nearest class in ``STATUS``."""
    return _entry(exc)[0]


def grpc_status(exc: HotswapError) -> str:
    """The gRPC status name (``grpc.StatusCode`` member) for ``exc``."""
    return _entry(exc)[1]


class SwapError(HotswapError):
    """A revision could not be made to serve; the previous model keeps serving."""

    code = "swap_failed"
    transient = False


class FetchError(SwapError):
    """The checkpoint could not be downloaded (network, permissions, credentials)."""

    code = "fetch_failed"
    transient = True


class Dropped(FetchError):
    """The connection broke off mid-body; a source with byte ranges is resumed."""


class CheckpointNotFound(FetchError):
    """The checkpoint URI names nothing (404, missing key, missing file)."""

    code = "not_found"


class FetchRefused(FetchError):
    """The runtime's policy forbids the fetch: a file outside the file roots, a special
    file, a refused network address or scheme. Retrying the same revision cannot help;
    the user changes the URI or the cluster admin the policy."""

    code = "fetch_refused"
    transient = False


class CheckpointTooLarge(SwapError):
    """The checkpoint is over the runtime's size limit."""

    code = "too_large"


class IntegrityError(SwapError):
    """The bytes fetched do not have the sha256 the revision names."""

    code = "sha256_mismatch"


class FormatError(SwapError):
    """The file is not a checkpoint this runtime reads safely."""

    code = "bad_format"


class ManifestError(FormatError):
    """A shard manifest is malformed, or names shards it may not."""

    code = "bad_manifest"


class ArchitectureError(SwapError):
    """The model named by ``model.architecture`` cannot be built."""

    code = "bad_architecture"


class StateDictMismatch(SwapError):
    """The checkpoint's keys or shapes do not fit the model (strict loading)."""

    code = "state_dict_mismatch"


class ValidationFailed(SwapError):
    """The warm-up / validation probe rejected the loaded model."""

    code = "validation_failed"


class EvaluationFailed(ValidationFailed):
    """The new weights' accuracy on spec.validation.evaluation's set is below a bound."""

    code = "evaluation_failed"


class ShadowRefused(ValidationFailed):
    """The new weights disagree with the serving ones on too many sampled live requests."""

    code = "shadow_refused"


class NonFiniteWeights(ValidationFailed):
    """The checkpoint or the probe output holds NaN or infinity."""

    code = "non_finite"


class Superseded(SwapError):
    """A newer desired revision arrived while this one was loading."""

    code = "superseded"


class ModelTooLarge(ArchitectureError):
    """The model that ``model.architecture`` and ``model.args`` describe has more
    parameters and buffers than the runtime's ``max_model_bytes``; it is never built."""

    code = "model_too_large"
