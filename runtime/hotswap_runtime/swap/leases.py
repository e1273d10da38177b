"""The live model reference, and the requests running on it.

Requests take a lease on the current model when they start and finish on it; a
retired model is released when its last lease ends: it becomes the standby (the next
swap copies new weights into it) or, in in-place mode or when a standby exists, it is
discarded. An in-place swap holds new requests, waits until none runs, overwrites the
live tensors, and lets requests go on, whatever happens in between.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from hotswap_contract.wire import ModelSpec, Revision
from hotswap_runtime.checkpoint.layouts import (
    FlatLayout,
    StateDict,
    TensorSpec,
    layout_of,
    model_bytes,
    tie_groups,
)
from hotswap_runtime.control.target import utc_now
from hotswap_runtime.devices import release_cached
from hotswap_runtime.errors import ModelNotReady
from hotswap_runtime.swap.footprint import Footprint
from hotswap_runtime.swap.frozen import Frozen, Network
from hotswap_runtime.swap.models import torch_dtype


@dataclass(eq=False)
class LoadedModel:
    """A network with weights loaded, and the requests currently running on it.

    ``targets`` are the module's state-dict tensors; ``layout``, ``nbytes`` and
    ``ties`` are taken from the freshly built module and carried to every model that
    reuses it, so a later check can tell the architecture's tied tensors from aliasing.
    ``flat``/``flat_layout``: the one buffer holding every target, laid out like a
    checkpoint's data (a reused standby), or None. ``footprint``: what its forward
    passes may hold (footprint.py), sized by its probe; None only outside the swapper.
    ``frozen``: the graph forward passes of the sizes it serves run on instead of
    ``module`` (frozen.py), or None."""

    revision: Revision
    module: nn.Module
    device: torch.device
    output_shape: tuple[int, ...]
    loaded_at: str = field(default_factory=utc_now)
    leases: int = 0
    retired: bool = False
    module_handed_on: bool = False  # the next LoadedModel owns the module
    targets: StateDict = field(default_factory=dict)
    flat: torch.Tensor | None = None
    flat_layout: FlatLayout | None = None
    layout: dict[str, TensorSpec] = field(default_factory=dict)
    nbytes: int = 0
    ties: frozenset[frozenset[str]] = frozenset()
    footprint: Footprint | None = None
    frozen: Frozen | None = None

    def __post_init__(self) -> None:
        if not self.targets:
            self.targets = self.module.state_dict()
            self.layout = layout_of(self.targets)
            self.nbytes = model_bytes(self.module)
            self.ties = tie_groups(self.targets)

    @property
    def key(self) -> tuple[int, str]:
        return self.revision.key

    def network(self, samples: int) -> Network:
        """What a forward pass of ``samples`` runs on: the frozen graph where it serves
        that size, else the module."""
        frozen = self.frozen
        return frozen.graph if frozen is not None and frozen.serves(samples) else self.module

    @property
    def dtype(self) -> torch.dtype:
        """The dtype inputs are given to the module in (``model.dtype``)."""
        return torch_dtype(self.revision.model)

    def successor(
        self,
        revision: Revision,
        output_shape: tuple[int, ...],
        footprint: Footprint,
        frozen: Frozen | None = None,
    ) -> LoadedModel:
        """A new entry for ``revision`` on this module and its tensors (never this
        entry's frozen graph: it answers with the weights it was built from)."""
        return LoadedModel(
            revision,
            self.module,
            self.device,
            output_shape,
            footprint=footprint,
            frozen=frozen,
            targets=self.targets,
            flat=self.flat,
            flat_layout=self.flat_layout,
            layout=self.layout,
            nbytes=self.nbytes,
            ties=self.ties,
        )


class Leases:
    """The current model, leases on it, the standby and the model draining to it."""

    def __init__(self, device: torch.device, keep_standby: bool) -> None:
        self.device = device
        self.keep_standby = keep_standby
        self._cond = threading.Condition()
        self._current: LoadedModel | None = None
        self._standby: LoadedModel | None = None
        self._draining: LoadedModel | None = None
        self._held = False

    # ---- serving side ---------------------------------------------------------------

    def current(self) -> LoadedModel | None:
        return self._current

    @contextlib.contextmanager
    def lease(self) -> Iterator[LoadedModel]:
        """The current model, guaranteed not to be released until the block ends."""
        with self._cond:
            self._cond.wait_for(lambda: not self._held)
            model = self._current
            if model is None:
                raise ModelNotReady("no model is loaded yet; wait for /v2/health/ready")
            model.leases += 1
        try:
            yield model
        finally:
            self._return(model)

    def _return(self, model: LoadedModel) -> None:
        with self._cond:
            model.leases -= 1
            if model.leases:
                return
            self._cond.notify_all()
            if not model.retired:
                return
        self.release(model)

    @property
    def held(self) -> bool:
        return self._held

    # ---- swap side ------------------------------------------------------------------

    def known(self, spec: ModelSpec) -> LoadedModel | None:
        """The current model or the standby, when it was built from ``spec``."""
        with self._cond:
            for model in (self._current, self._standby):
                if model is not None and model.revision.model == spec:
                    return model
        return None

    def take_standby(self, spec: ModelSpec, drain_timeout: float) -> LoadedModel | None:
        """The standby for ``spec`` (waiting briefly for one still draining), or None;
        a standby of another spec or device is discarded."""
        with self._cond:
            draining = self._draining
            if self._standby is None and draining is not None and draining.revision.model == spec:
                self._cond.wait_for(lambda: self._standby is not None, drain_timeout)
            standby, self._standby = self._standby, None
        if standby is None:
            return None
        if standby.revision.model != spec or standby.device != self.device:
            self.discard(standby)
            return None
        return standby

    def activate(self, new: LoadedModel) -> None:
        """Make ``new`` current; the old model is released once its last request ends."""
        with self._cond:
            old, self._current = self._current, new
            if old is None:
                return
            old.retired = True
            busy = old.leases > 0
            if busy:
                self._draining = old
        if not busy:
            self.release(old)

    def replace_in_place(self, overwrite: Callable[[LoadedModel], LoadedModel]) -> None:
        """Hold new requests, wait until none runs on the current model, and make
        ``overwrite(current)`` current; requests go on whatever ``overwrite`` does."""
        with self._cond:
            old = self._current
            if old is None:
                raise ModelNotReady("an in-place swap needs a serving model")
            self._held = True
            try:
                self._cond.wait_for(lambda: old.leases == 0)
                new = overwrite(old)
                old.retired = True
                old.module_handed_on = True
                self._current = new
            finally:
                self._held = False
                self._cond.notify_all()

    def release(self, model: LoadedModel) -> None:
        """A model no request uses any more: keep it as the standby, or free it."""
        if model.module_handed_on:
            return
        with self._cond:
            if self._draining is model:
                self._draining = None
            if self.keep_standby and self._standby is None:
                model.frozen = None  # a standby is filled with new weights, never served
                self._standby = model
                self._cond.notify_all()
                return
        self.discard(model)

    def discard(self, model: LoadedModel) -> None:
        model.frozen = None
        model.targets = {}
        model.flat = None
        del model.module
        gc.collect()
        release_cached(self.device)
