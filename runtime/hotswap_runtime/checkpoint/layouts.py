"""Weight layouts: what a model's state dict must hold, and where its tensors live.

* ``Layout``: the names, dtypes and shapes of a model's state dict, known before a
  checkpoint is parsed (from the serving model, or from a build on the meta device), so
  a reader can refuse a file that does not fit before it allocates anything for it.
* ``Expected.check``: a checkpoint's names, shapes and dtypes against a Layout, with a
  StateDictMismatch that names at most a few tensors.
* ``FlatLayout``: where each tensor of a safetensors data section lies; it can only be
  constructed sorted, contiguous from 0, without overlaps or holes.
* ``overlaps``/``tie_groups``: no two tensors of a model may share memory unless the
  architecture itself ties them (the same parameter registered under two names).
* ``bind_flat``/``is_bound``: a standby's tensors as views of one flat buffer laid out
  like the checkpoint's data, so a swap is one bulk copy; checked before and after.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from hotswap_contract.redact import clip
from hotswap_runtime.errors import StateDictMismatch

StateDict = dict[str, torch.Tensor]
MAX_NAMED = 5  # tensors named in one reason, then "and N more"


@dataclass(frozen=True)
class TensorSpec:
    """The dtype and shape a tensor has (or must have)."""

    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


Layout = Mapping[str, TensorSpec]  # ordered like the model's state_dict


def layout_of(state: Mapping[str, torch.Tensor]) -> dict[str, TensorSpec]:
    return {name: TensorSpec(t.dtype, tuple(t.shape)) for name, t in state.items()}


def model_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers, each shared one counted once."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def named(items: list[str], limit: int = MAX_NAMED) -> str:
    """``items`` joined, at most ``limit`` of them, each clipped, then "and N more"."""
    shown = ", ".join(clip(item, 100) for item in items[:limit])
    return shown + (f", and {len(items) - limit} more" if len(items) > limit else "")


@dataclass(frozen=True)
class Expected:
    """What a checkpoint must hold: the target model's layout, and whether tensors of
    another dtype may be cast on copy (``model.castWeights``)."""

    layout: Layout
    architecture: str
    cast: bool = False

    def dtype_for(self, name: str, found: torch.dtype) -> torch.dtype:
        """The dtype ``name`` is staged in: the model's (a checked file only differs
        where casting is allowed)."""
        spec = self.layout.get(name)
        return spec.dtype if spec is not None else found

    def check(self, found: Mapping[str, TensorSpec], where: str) -> None:
        """Strict loading's checks plus dtypes, before any tensor data is read."""
        problems = _problems(self.layout, found, self.cast)
        if problems:
            raise StateDictMismatch(
                clip(f"checkpoint {where} does not fit {self.architecture}: " + "; ".join(problems))
            )


def _problems(layout: Layout, found: Mapping[str, TensorSpec], cast: bool) -> list[str]:
    missing = [name for name in layout if name not in found]
    extra = sorted(name for name in found if name not in layout)
    both = [name for name in layout if name in found]
    shapes = [
        f"{n} {found[n].shape} vs model {layout[n].shape}"
        for n in both
        if found[n].shape != layout[n].shape
    ]
    problems = [
        f"{label}: {named(items)}"
        for label, items in (("missing keys", missing), ("unexpected keys", extra))
        if items
    ]
    if shapes:
        problems.append(f"wrong shapes: {named(shapes)}")
    dtypes = _dtype_problem(layout, found, both, cast)
    if dtypes:
        problems.append(dtypes)
    return problems


def _dtype_problem(
    layout: Layout, found: Mapping[str, TensorSpec], names: list[str], cast: bool
) -> str:
    """ "fc.weight is float16, the model's is float32; save ... or set castWeights", with
    tensors grouped by (their dtype, the model's)."""
    groups: dict[tuple[torch.dtype, torch.dtype], list[str]] = {}
    for n in names:
        if found[n].dtype != layout[n].dtype and not _castable(found[n], layout[n], cast):
            groups.setdefault((found[n].dtype, layout[n].dtype), []).append(n)
    if not groups:
        return ""
    items = [
        f"{named(group)} {'is' if len(group) == 1 else 'are'} {dtype_name(have)}, "
        f"the model's {'is' if len(group) == 1 else 'are'} {dtype_name(want)}"
        for (have, want), group in groups.items()
    ]
    shown = "; ".join(items[:3]) + (f"; and {len(items) - 3} more" if len(items) > 3 else "")
    if cast:
        return f"wrong dtypes: {shown} (complex and real tensors are never cast)"
    targets = {want for _, want in groups}
    into = dtype_name(targets.pop()) if len(targets) == 1 else "the model's dtypes"
    return (
        f"wrong dtypes: {shown}; save the checkpoint in {into} or set spec.model.castWeights: true"
    )


def _castable(found: TensorSpec, target: TensorSpec, cast: bool) -> bool:
    return cast and found.dtype.is_complex == target.dtype.is_complex


# ---- where tensors live ---------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """One tensor of a checkpoint's data section: bytes ``[begin, end)``."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def spec(self) -> TensorSpec:
        return TensorSpec(self.dtype, self.shape)

    @property
    def aligned(self) -> bool:
        return self.begin % self.dtype.itemsize == 0


@dataclass(frozen=True)
class FlatLayout:
    """Slots sorted by offset, back to back from 0: no overlap, no hole, no duplicate
    name, each exactly its shape's size. Construction refuses anything else."""

    slots: tuple[Slot, ...]

    def __post_init__(self) -> None:
        end = 0
        names: set[str] = set()
        for slot in self.slots:
            if slot.begin != end or slot.end - slot.begin != slot.spec.nbytes:
                raise ValueError(f"tensor {clip(slot.name, 100)!r} is not where it must be")
            if slot.name in names:
                raise ValueError(f"tensor {clip(slot.name, 100)!r} appears twice")
            names.add(slot.name)
            end = slot.end

    @property
    def nbytes(self) -> int:
        return self.slots[-1].end if self.slots else 0

    def specs(self) -> dict[str, TensorSpec]:
        return {slot.name: slot.spec for slot in self.slots}


def _extent(t: torch.Tensor) -> int:
    """Bytes from ``t.data_ptr()`` to the end of its last element."""
    if t.numel() == 0:
        return 0
    last = sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride(), strict=True))
    return (last + 1) * t.element_size()


def _regions(state: Mapping[str, torch.Tensor]) -> list[tuple[str, int, int, str]]:
    found = [
        (str(t.device), t.data_ptr(), t.data_ptr() + _extent(t), name)
        for name, t in state.items()
        if t.numel()
    ]
    return sorted(found, key=lambda r: (r[0], r[1], -r[2]))


def tie_groups(state: Mapping[str, torch.Tensor]) -> frozenset[frozenset[str]]:
    """Names whose tensors occupy exactly the same memory: the architecture's ties."""
    groups: dict[tuple[str, int, int, torch.dtype, tuple[int, ...]], set[str]] = {}
    for name, t in state.items():
        if t.numel():
            key = (str(t.device), t.data_ptr(), _extent(t), t.dtype, tuple(t.shape))
            groups.setdefault(key, set()).add(name)
    return frozenset(frozenset(g) for g in groups.values() if len(g) > 1)


def overlaps(
    state: Mapping[str, torch.Tensor], ties: Iterable[frozenset[str]] = ()
) -> list[tuple[str, str]]:
    """Pairs of tensors that share memory without being tied by the architecture."""
    tied = {name: group for group in ties for name in group}
    found = []
    holder: tuple[str, int, int, str] | None = None
    for region in _regions(state):
        device, start, end, name = region
        if holder is not None and holder[0] == device and start < holder[2]:
            same = (start, end) == (holder[1], holder[2])
            if not (same and name in tied.get(holder[3], ())):
                found.append((holder[3], name))
            if end <= holder[2]:
                continue
        holder = region
    return found


def is_bound(targets: Mapping[str, torch.Tensor], flat: torch.Tensor, layout: FlatLayout) -> bool:
    """Whether every target is exactly the view of ``flat`` that ``layout`` assigns it."""
    if len(targets) != len(layout.slots):
        return False
    base = flat.data_ptr()
    for slot in layout.slots:
        t = targets.get(slot.name)
        if t is None or t.dtype != slot.dtype or tuple(t.shape) != slot.shape:
            return False
        if t.numel() and (t.data_ptr() != base + slot.begin or not t.is_contiguous()):
            return False
    return flat.numel() == layout.nbytes


def bindable(targets: Mapping[str, torch.Tensor], layout: FlatLayout) -> bool:
    """A flat buffer can hold these targets: same names, dtypes and shapes, every slot
    aligned for its dtype, no ties (tied tensors must stay one tensor), and every target
    contiguous (a channels-last one keeps its format: memory_format.py)."""
    return (
        layout_of(targets) == layout.specs()
        and all(slot.aligned for slot in layout.slots)
        and all(t.is_contiguous() for t in targets.values())
        and not tie_groups(targets)
    )


def bind_flat(
    module: nn.Module, layout: FlatLayout, device: torch.device, flat: torch.Tensor | None = None
) -> tuple[torch.Tensor, StateDict]:
    """Point every state-dict tensor of ``module`` at its slot of one flat buffer: a new
    one (values not kept: the caller fills them), or ``flat``, which already holds them.

    The caller has checked ``bindable``; the views cannot overlap (FlatLayout) and the
    result is checked with ``is_bound``."""
    if flat is None:
        flat = torch.empty(layout.nbytes, dtype=torch.uint8, device=device)
    if flat.numel() != layout.nbytes or flat.device != device or flat.dtype != torch.uint8:
        raise RuntimeError("the buffer to bind does not match the layout or the device")
    views = {s.name: flat[s.begin : s.end].view(s.dtype).view(s.shape) for s in layout.slots}
    for name, view in views.items():
        _rebind(module, name, view)
    targets = module.state_dict()
    if not is_bound(targets, flat, layout) or overlaps(targets):
        raise RuntimeError("rebinding the standby's tensors to one buffer did not hold")
    return flat, targets


def _rebind(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Point parameter or buffer ``name`` of ``module`` at ``tensor``."""
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name)
    if attr in owner._parameters and owner._parameters[attr] is not None:
        owner._parameters[attr].data = tensor  # type: ignore[union-attr]
    elif attr in owner._buffers:
        owner._buffers[attr] = tensor
    else:
        raise RuntimeError(f"the model has no parameter or buffer {clip(name, 100)!r}")
