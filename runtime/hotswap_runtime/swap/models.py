"""Builders for the networks a checkpoint loads into.

``torchvision/<name>`` goes through torchvision's model registry with ``args`` as
keyword arguments and no pretrained weights (nor pretrained backbones: nothing is ever
downloaded); ``python/<module>:<factory>`` imports a module and calls
``factory(**args)``. Both must be covered by the admin's allowlist (policy.py), which
is checked before anything is imported; a factory allowed through a module entry
(``python/<module>``) must also be defined in an allowed module (its ``__module__``;
a ``functools.partial`` is judged by what it wraps), so a name the module merely
imports (``subprocess.run``, ``torch.hub.load``) is never called. Anything else is an
ArchitectureError. A model
whose ``dtype`` is float16 or bfloat16 is built, then its floating-point parameters and
buffers are converted (so its layout, size and the fit check are in that dtype).

``size_model`` learns a model's layout and size before it is built for real: it builds
the network on the meta device (no memory), or, for a constructor that computes on
tensor values (torchvision's RegNets), on the CPU under an allocation budget; a model
over ``max_model_bytes`` is refused there. ``build_bounded`` builds for real under the
same budget, so no constructor allocates past it whatever ``model.args`` say.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from hotswap_contract.policy import architecture_allowed, architecture_refusal, factory_allowed
from hotswap_contract.redact import clip
from hotswap_contract.wire import DEFAULT_DTYPE, ModelSpec
from hotswap_runtime.checkpoint.layouts import Layout, layout_of, model_bytes
from hotswap_runtime.errors import ArchitectureError, ModelTooLarge
from hotswap_runtime.swap.allocations import AllocationBudget

log = logging.getLogger(__name__)
BUILD_FACTOR = 2  # a build may allocate twice the model limit in all (temporaries)
MAX_PARTIALS = 8  # functools.partial wrappers unwrapped to find where a factory is defined

# Keyword arguments that would fetch pretrained weights from the internet.
_DOWNLOADS = ("weights", "weights_backbone", "progress")


def build_model(spec: ModelSpec, device: torch.device | str, allowed: Sequence[str]) -> nn.Module:
    """A fresh network for ``spec`` on ``device``, in eval mode and without gradients.

    ``allowed`` is the admin's architecture allowlist; an architecture outside it is
    refused before its module is imported."""
    if not architecture_allowed(spec.architecture, allowed):
        raise ArchitectureError(architecture_refusal(spec.architecture, allowed))
    kind, _, target = spec.architecture.partition("/")
    with torch.device(device), _FloatsIn(torch_dtype(spec)):
        if kind == "torchvision":
            module = _torchvision(target, spec.args)
        else:
            module = _python(target, spec.args, allowed)
    module.eval()
    module.requires_grad_(False)
    return module


_FACTORIES = frozenset(
    {torch.empty, torch.zeros, torch.ones, torch.rand, torch.randn, torch.empty_strided}
)


class _FloatsIn(TorchFunctionMode):
    """Within this thread, tensors that the float factories create without a dtype are
    made in ``dtype``: a float16 model is built in float16, never first in float32
    (torch's default dtype is process-wide, and serving threads use it)."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func in _FACTORIES and kwargs.get("dtype") is None:
            kwargs["dtype"] = self.dtype
        return func(*args, **kwargs)


def in_dtype(module: nn.Module, spec: ModelSpec) -> nn.Module:
    """``module`` with its floating-point parameters and buffers in ``spec.dtype`` (what
    the build did not already make in it: tensors from literals, float64 buffers)."""
    if spec.dtype != DEFAULT_DTYPE:
        module.to(torch_dtype(spec))  # tensor by tensor: at most one extra tensor at a time
    return module


def torch_dtype(spec: ModelSpec) -> torch.dtype:
    """The dtype ``spec.dtype`` names (float32, float16 or bfloat16)."""
    dtype: torch.dtype = getattr(torch, spec.dtype)
    return dtype


def _torchvision(name: str, args: dict[str, Any]) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models():
        raise ArchitectureError(
            f"unknown architecture torchvision/{name}: torchvision "
            f"{torchvision.__version__} has no model named {clip(name, 60)!r} "
            "(see torchvision.models.list_models(), e.g. resnet50)"
        )
    refused = sorted(set(args) & set(_DOWNLOADS))
    if refused:
        raise ArchitectureError(
            f"torchvision/{name}: model.args may not set {', '.join(refused)} "
            "(pretrained weights are never downloaded; the checkpoint holds the weights)"
        )
    builder = torchvision.models.get_model_builder(name)
    extra = {"weights_backbone": None} if "weights_backbone" in _parameters(builder) else {}
    return _call(f"torchvision/{name}", builder, {"weights": None, **extra, **args})


def _python(target: str, args: dict[str, Any], allowed: Sequence[str]) -> nn.Module:
    module_name, _, factory_name = target.partition(":")
    name = f"python/{target}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ArchitectureError(
            f"cannot import the module of architecture {name} ({type(exc).__name__}); "
            "install it in the runtime image"
        ) from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ArchitectureError(
            f"architecture {name}: module {module_name!r} has no callable {factory_name!r}"
        )
    defined_in = defining_module(factory)
    if not factory_allowed(name, defined_in, allowed):
        shown = clip(defined_in or "(no module)", 80)
        raise ArchitectureError(
            f"architecture {name}: {factory_name!r} is defined in {shown!r}, not in an "
            f"allowed module ({module_name!r} only imports it); name a factory defined in "
            "an allowed module, or ask the cluster admin to allow this one in the chart "
            "value policy.architectures"
        )
    return _call(name, factory, args)


def defining_module(factory: Any) -> str:
    """The module that defines ``factory`` (a function, class or method; a partial is
    judged by the callable it wraps), or "" when it names none."""
    for _ in range(MAX_PARTIALS):
        if not isinstance(factory, functools.partial):
            break
        factory = factory.func
    module = getattr(factory, "__module__", None)
    return module if isinstance(module, str) else ""


def _call(name: str, factory: Any, args: dict[str, Any]) -> nn.Module:
    """``factory(**args)``: any exception, SystemExit included, is an ArchitectureError
    that names its type only (args and exception text may be large or hostile)."""
    try:
        built = factory(**args)
    except BaseException as exc:  # SystemExit from a factory must not kill the loader
        if isinstance(exc, KeyboardInterrupt | ModelTooLarge):
            raise
        raise ArchitectureError(
            f"{name} could not be built from model.args: {type(exc).__name__}: "
            f"{clip(str(exc), 160)}; check model.args"
        ) from None
    if not isinstance(built, nn.Module):
        raise ArchitectureError(f"{name} returned {type(built).__name__}, not a torch.nn.Module")
    return built


def _parameters(builder: Any) -> set[str]:
    try:
        return set(inspect.signature(builder).parameters)
    except (TypeError, ValueError):
        return set()


@dataclass(frozen=True, eq=False)
class Blueprint:
    """A model's state-dict layout and its size, known before it is built for real.
    ``module`` is the CPU-built network when sizing had to build one (reused when the
    model is wanted on the CPU)."""

    spec: ModelSpec
    layout: Layout
    nbytes: int
    module: nn.Module | None = None


def size_model(spec: ModelSpec, allowed: Sequence[str], max_bytes: int) -> Blueprint:
    """The layout and size of ``spec``'s model, or ModelTooLarge when it is over
    ``max_bytes``; nothing is allocated for a model that fits on the meta device."""
    if not architecture_allowed(spec.architecture, allowed):
        raise ArchitectureError(architecture_refusal(spec.architecture, allowed))
    limit = BUILD_FACTOR * max_bytes
    try:
        module = build_bounded(spec, torch.device("meta"), allowed, limit)
        built = None
    except ModelTooLarge:
        raise
    except ArchitectureError as exc:  # e.g. a constructor reading tensor values
        log.info(
            "%s cannot be sized on the meta device (%s); sizing it on the CPU",
            spec.architecture,
            exc,
        )
        module = built = build_bounded(spec, torch.device("cpu"), allowed, limit)
    nbytes = model_bytes(module)
    if nbytes > max_bytes:
        raise ModelTooLarge(
            f"{spec.architecture} with these model.args has {nbytes} bytes of parameters "
            f"and buffers, over this runtime's limit of {max_bytes} (HOTSWAP_MAX_MODEL_BYTES); "
            "check model.args"
        )
    return Blueprint(spec, layout_of(module.state_dict()), nbytes, built)


def build_bounded(
    spec: ModelSpec, device: torch.device, allowed: Sequence[str], limit: int
) -> nn.Module:
    """``build_model`` under an allocation budget of ``limit`` bytes."""
    budget = AllocationBudget(limit, spec.architecture)
    try:
        with budget:
            module = build_model(spec, device, allowed)
    except ArchitectureError:
        if not budget.exceeded:
            raise
        module = None  # a constructor turned the refusal into another error
    if budget.exceeded:  # ... or swallowed it
        raise ModelTooLarge(
            f"{spec.architecture}: building it would allocate more than {limit} bytes; "
            "check model.args (or raise HOTSWAP_MAX_MODEL_BYTES)"
        )
    assert module is not None
    return in_dtype(module, spec)  # outside the budget: at most the built model's size
