"""Builders for the networks a checkpoint loads into.

``torchvision/<name>`` goes through torchvision's model registry with ``args`` as
keyword arguments and no pretrained weights; ``python/<module>:<factory>`` imports a
user module and calls ``factory(**args)``. Anything else is an ArchitectureError.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from .contract import ModelSpec
from .errors import ArchitectureError


def build_model(spec: ModelSpec, device: torch.device | str = "cpu") -> nn.Module:
    """A fresh network for ``spec`` on ``device``, in eval mode and without gradients."""
    kind, _, target = spec.architecture.partition("/")
    with torch.device(device):
        if kind == "torchvision":
            module = _torchvision(target, spec.args)
        elif kind == "python":
            module = _python(target, spec.args)
        else:
            raise ArchitectureError(
                f"unknown architecture {spec.architecture!r}: "
                "use torchvision/<name> or python/<module>:<factory>"
            )
    module.eval()
    module.requires_grad_(False)
    return module


def _torchvision(name: str, args: dict[str, Any]) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models():
        raise ArchitectureError(
            f"unknown architecture torchvision/{name}: torchvision "
            f"{torchvision.__version__} has no model named {name!r} "
            "(see torchvision.models.list_models(), e.g. resnet50)"
        )
    try:
        module = torchvision.models.get_model(name, weights=None, **args)
    except (TypeError, ValueError) as exc:
        raise ArchitectureError(f"torchvision/{name} rejects args {args}: {exc}") from None
    return _checked(module, f"torchvision/{name}")


def _python(target: str, args: dict[str, Any]) -> nn.Module:
    module_name, _, factory_name = target.partition(":")
    name = f"python/{target}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ArchitectureError(
            f"unknown architecture {name}: cannot import {module_name!r} ({exc}); "
            "install it in the runtime image"
        ) from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ArchitectureError(
            f"unknown architecture {name}: module {module_name!r} has no callable {factory_name!r}"
        )
    try:
        built = factory(**args)
    except Exception as exc:
        raise ArchitectureError(f"{name}({args}) raised {type(exc).__name__}: {exc}") from None
    return _checked(built, name)


def _checked(module: object, name: str) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise ArchitectureError(f"{name} returned {type(module).__name__}, not a torch.nn.Module")
    return module
