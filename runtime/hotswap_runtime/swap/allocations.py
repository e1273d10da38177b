"""A byte budget for building a model: every tensor an op would create is sized first.

``model.args`` come from whoever edits a ModelDeployment, and a factory's constructor
sizes its tensors from them (``num_classes: 10**9``). While a model is built under
``AllocationBudget``, each aten op that returns a new tensor is first run on the meta
device (no memory) to learn the size of what it would allocate; an op that would take
the build's total past the limit raises ModelTooLarge before it runs. Ops without a
meta kernel are counted after they ran (they are rare in constructors: data-dependent
ops on small tensors). Views and in-place ops allocate nothing and pass untouched.

The total counts every allocation, freed or not, so a limit of twice the model limit
leaves room for a constructor's temporaries while still bounding the build.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from hotswap_runtime.errors import ModelTooLarge

_META = torch.device("meta")


class AllocationBudget(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Refuses, before it runs, an op whose new tensors would exceed the budget."""

    def __init__(self, limit: int, what: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.limit = limit
        self.what = what
        self.spent = 0

    def __torch_dispatch__(
        self,
        func: torch._ops.OpOverload,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if _on_meta(args, kwargs):  # a build on the meta device: nothing is allocated
            return func(*args, **kwargs)
        if func in _RESIZES:
            self._spend(_resized_bytes(args))
            return func(*args, **kwargs)
        if not _allocates(func):
            return func(*args, **kwargs)
        need = _predicted(func, args, kwargs)
        if need is not None:
            self._spend(need)
        out = func(*args, **kwargs)
        if need is None:
            self._spend(_bytes(out))
        return out

    def _spend(self, nbytes: int) -> None:
        if self.spent + nbytes > self.limit:
            self.spent = self.limit + 1  # stays over: a swallowed refusal refuses again
            raise ModelTooLarge(
                f"{self.what}: building it would allocate more than {self.limit} bytes; "
                "check model.args (or raise HOTSWAP_MAX_MODEL_BYTES)"
            )
        self.spent += nbytes

    @property
    def exceeded(self) -> bool:
        return self.spent > self.limit


_RESIZES = (torch.ops.aten.resize_.default, torch.ops.aten.resize_as_.default)


def _on_meta(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    device = kwargs.get("device")
    if device is not None:
        return torch.device(device).type == "meta"
    leaves, _ = tree_flatten(args)
    return any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in leaves)


def _allocates(func: torch._ops.OpOverload) -> bool:
    """Whether ``func`` returns a tensor that aliases none of its inputs."""
    return any(ret.alias_info is None and "Tensor" in str(ret.type) for ret in func._schema.returns)


def _predicted(
    func: torch._ops.OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> int | None:
    """Bytes ``func`` would allocate, from running it on meta copies; None if unknown."""
    try:
        meta_args, meta_kwargs = tree_map(_to_meta, (args, kwargs))
        if "device" in meta_kwargs:
            meta_kwargs["device"] = _META
        meta_kwargs.pop("pin_memory", None)
        return _bytes(func(*meta_args, **meta_kwargs))
    except Exception:
        return None


def _resized_bytes(args: tuple[Any, ...]) -> int:
    tensor, shape = args[0], args[1]
    if isinstance(shape, torch.Tensor):
        shape = shape.shape
    return math.prod(int(d) for d in shape) * int(tensor.element_size())


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(_META)
    return value


def _bytes(out: Any) -> int:
    leaves, _ = tree_flatten(out)
    return sum(int(t.untyped_storage().nbytes()) for t in leaves if isinstance(t, torch.Tensor))
