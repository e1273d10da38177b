"""The swapper owns the live model reference and replaces it without failing a request.

A swap runs off the serving path: fetch -> parse -> load -> validate, then one
reference assignment (``activate``). Requests take a lease on the current model when
they start and finish on it; a retired model is released when its last lease ends.

Where the weights go:

* ``standby``: the previous model, once its last request has finished, is kept as a
  standby; the next swap copies the new weights into it (on CUDA from pinned host
  buffers on a side stream) and swaps the reference. No build, no allocation.
* ``fresh``: no usable standby (first load, new architecture, or the previous model
  still busy past a short wait): build a new network and ``load_state_dict(strict)``.
* ``inplace``: on CUDA when the GPU cannot hold two copies (or when configured): the
  new weights are validated on a CPU copy, then new requests are briefly held, the
  weights are copied into the live tensors, and requests resume.

Any exception before ``activate`` leaves the serving model untouched.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from .contract import ModelSpec, Revision, Validation
from .devices import Staging, free_bytes, is_cuda, release_cached
from .errors import (
    ModelNotReady,
    NonFiniteWeights,
    StateDictMismatch,
    Superseded,
    ValidationFailed,
)
from .models import build_model
from .store import CheckpointStore
from .weights import StateDict, non_finite_keys, read_state_dict, read_tensor, state_bytes

log = logging.getLogger(__name__)

PHASES = ("fetch", "parse", "load", "validate", "activate")
ROOM_FACTOR = 1.25  # free GPU memory needed for a second copy, as a multiple of its size


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(eq=False)
class LoadedModel:
    """A network with weights loaded, and the requests currently running on it."""

    revision: Revision
    module: nn.Module
    device: torch.device
    output_shape: tuple[int, ...]
    loaded_at: str = field(default_factory=utc_now)
    leases: int = 0
    retired: bool = False
    module_handed_on: bool = False  # in-place swap: the next LoadedModel owns the module
    targets: StateDict = field(default_factory=dict)  # the module's state_dict tensors
    flat: torch.Tensor | None = None  # one buffer holding every target, checkpoint layout
    flat_layout: object = None

    def __post_init__(self) -> None:
        if not self.targets:
            self.targets = self.module.state_dict()

    @property
    def key(self) -> tuple[int, str]:
        return self.revision.key


@dataclass
class PhaseClock:
    """Seconds spent in each swap phase, filled as phases run (also when one fails)."""

    phases: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] = round(time.perf_counter() - start, 6)


@dataclass
class _Plan:
    kind: str  # fresh | standby | inplace
    target: LoadedModel | None = None


class Swapper:
    """Serves leases on the current model and swaps in new revisions."""

    def __init__(
        self,
        store: CheckpointStore,
        device: torch.device,
        allowed: Sequence[str],
        mode: str = "auto",
        drain_timeout: float = 2.0,
    ) -> None:
        self.store = store
        self.device = device
        self.allowed = tuple(allowed)  # the admin's architecture allowlist (policy.py)
        self.mode = mode
        self.drain_timeout = drain_timeout
        self._cond = threading.Condition()
        self._current: LoadedModel | None = None
        self._standby: LoadedModel | None = None
        self._draining: LoadedModel | None = None
        self._held = False
        self._staging = Staging(pin=is_cuda(device))
        self._stream: torch.cuda.Stream | None = (
            torch.cuda.Stream(device) if is_cuda(device) else None  # type: ignore[no-untyped-call]
        )
        self.last_kind = ""

    # ---- serving side -------------------------------------------------------------

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
        self._release(model)

    def _release(self, model: LoadedModel) -> None:
        if model.module_handed_on:
            return
        with self._cond:
            if self._draining is model:
                self._draining = None
            if self.mode != "inplace" and self._standby is None:
                self._standby = model
                self._cond.notify_all()
                return
        self._discard(model)

    def _discard(self, model: LoadedModel) -> None:
        del model.module
        gc.collect()
        release_cached(self.device)

    # ---- swap side ----------------------------------------------------------------

    def swap_to(
        self,
        revision: Revision,
        cancelled: Callable[[], bool] = lambda: False,
        clock: PhaseClock | None = None,
    ) -> PhaseClock:
        """Make ``revision`` serve, or raise SwapError leaving the current model serving."""
        clock = clock or PhaseClock()
        self._protect(revision)
        with clock("fetch"):
            path = self.store.fetch(revision.checkpoint, cancelled)
        _stop_if(cancelled, revision)
        with clock("parse"):
            state = self._parse(path, revision)
        _stop_if(cancelled, revision)
        plan = self._plan(revision, state)
        self.last_kind = plan.kind
        try:
            with clock("load"):
                module = self._load(plan, revision, state)
            _stop_if(cancelled, revision)
            with clock("validate"):
                shape = self._validate(module, revision, plan)
            _stop_if(cancelled, revision)
        except BaseException:
            if plan.target is not None:
                self._release(plan.target)
            raise
        with clock("activate"):
            self._activate(plan, revision, module, shape, state)
        self._protect(revision)
        return clock

    def _protect(self, loading: Revision) -> None:
        current = self._current
        shas = {loading.checkpoint.sha256}
        if current is not None:
            shas.add(current.revision.checkpoint.sha256)
        self.store.protect(shas)

    def _parse(self, path: Path, revision: Revision) -> StateDict:
        state = read_state_dict(path, revision.checkpoint.uri, self._staging)
        bad = non_finite_keys(state)
        if bad:
            raise NonFiniteWeights(
                f"checkpoint {revision.checkpoint.uri}: tensors hold NaN or infinity: "
                f"{', '.join(bad[:5])}"
            )
        return state

    def _plan(self, revision: Revision, state: StateDict) -> _Plan:
        current = self._current
        same_spec = current is not None and current.revision.model == revision.model
        if self.mode == "inplace" and same_spec:
            return _Plan("inplace")
        standby = self._take_standby(revision.model)
        if standby is not None:
            return _Plan("standby", standby)
        if self.mode == "auto" and same_spec and not self._room_for(state):
            return _Plan("inplace")
        return _Plan("fresh")

    def _room_for(self, state: StateDict) -> bool:
        free = free_bytes(self.device)
        return free is None or free >= ROOM_FACTOR * state_bytes(state)

    def _take_standby(self, spec: ModelSpec) -> LoadedModel | None:
        with self._cond:
            draining = self._draining
            if self._standby is None and draining is not None and draining.revision.model == spec:
                self._cond.wait_for(lambda: self._standby is not None, self.drain_timeout)
            standby, self._standby = self._standby, None
        if standby is None:
            return None
        if standby.revision.model != spec or standby.device != self.device:
            self._discard(standby)
            return None
        return standby

    def _load(self, plan: _Plan, revision: Revision, state: StateDict) -> nn.Module:
        if plan.kind == "standby":
            assert plan.target is not None
            check_state_dict(plan.target.targets, state, revision)
            self._fill(plan.target, state)
            return plan.target.module
        device = torch.device("cpu") if plan.kind == "inplace" else self.device
        module = build_model(revision.model, device, self.allowed)
        check_state_dict(module.state_dict(), state, revision)
        with torch.no_grad():
            module.load_state_dict(state, strict=True)
        return module

    def _fill(self, model: LoadedModel, state: StateDict) -> None:
        """Load ``state`` into a standby: one bulk copy when its tensors live in one flat
        buffer laid out like the checkpoint's data (set up on first use), else per tensor."""
        staged = self._staging.flat_for(state)
        if staged is not None and self._flat_ready(model, state, *staged):
            assert model.flat is not None
            self._copy_flat(model.flat, staged[0])
            return
        self._copy_into(model.targets, state)

    def _flat_ready(
        self, model: LoadedModel, state: StateDict, host: torch.Tensor, layout: object
    ) -> bool:
        if model.flat is not None and model.flat_layout == layout:
            return True
        if not _flattenable(model.targets, state, host):
            return False
        flat = torch.empty(host.numel(), dtype=torch.uint8, device=self.device)
        base = host.data_ptr()
        for name, src in state.items():
            start = src.data_ptr() - base
            view = flat[start : start + src.numel() * src.element_size()]
            _rebind(model.module, name, view.view(src.dtype).view(src.shape))
        model.flat, model.flat_layout = flat, layout
        model.targets = model.module.state_dict()
        return True

    def _copy_flat(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        with torch.no_grad():
            if self._stream is None:
                dst.copy_(src)
                return
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._stream):
                dst.copy_(src, non_blocking=True)
            self._stream.synchronize()

    def _copy_into(self, targets: StateDict, state: StateDict) -> None:
        """Copy ``state`` into a module's tensors: one foreach call, on CUDA on the side
        stream from pinned buffers, so the GIL is taken a handful of times, not per tensor."""
        names = list(targets)
        dst = [targets[name] for name in names]
        src = [state[name] for name in names]
        with torch.no_grad():
            if self._stream is None:
                torch._foreach_copy_(dst, src)
                return
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._stream):
                torch._foreach_copy_(dst, src, non_blocking=True)
            self._stream.synchronize()

    def _validate(self, module: nn.Module, revision: Revision, plan: _Plan) -> tuple[int, ...]:
        device = torch.device("cpu") if plan.kind == "inplace" else self.device
        output = self._forward(module, probe_input(revision.model.input_shape), device)
        shape = check_probe(output, revision)
        current = self._current
        same_spec = current is not None and current.revision.model == revision.model
        if current is not None and same_spec and shape != current.output_shape:
            raise ValidationFailed(
                f"revision {revision.revision}: probe output shape {shape} differs from "
                f"the serving revision's {current.output_shape}"
            )
        if revision.validation is not None:
            self._check_expected(module, revision, revision.validation, device)
        return shape

    def _forward(self, module: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        stream = self._stream if is_cuda(device) else None
        with torch.inference_mode():
            if stream is None:
                return _as_tensor(module(x.to(device)), "probe")
            with torch.cuda.stream(stream):
                out = _as_tensor(module(x.to(device, non_blocking=True)), "probe").float()
                result = out.to("cpu", non_blocking=True)
            stream.synchronize()
            return result

    def _check_expected(
        self, module: nn.Module, revision: Revision, check: Validation, device: torch.device
    ) -> None:
        x = read_tensor(self.store.fetch(check.input), check.input.uri)
        expected = read_tensor(self.store.fetch(check.expected), check.expected.uri).float()
        got = self._forward(module, x.float(), device).float().cpu()
        if got.shape != expected.shape:
            raise ValidationFailed(
                f"revision {revision.revision}: validation output shape {tuple(got.shape)} "
                f"differs from expected {tuple(expected.shape)}"
            )
        worst = float((got - expected).abs().max()) if got.numel() else 0.0
        if not worst <= check.tolerance:
            raise ValidationFailed(
                f"revision {revision.revision}: validation output differs from expected by "
                f"{worst:.3g} > tolerance {check.tolerance}"
            )

    def _activate(
        self,
        plan: _Plan,
        revision: Revision,
        module: nn.Module,
        shape: tuple[int, ...],
        state: StateDict,
    ) -> None:
        if plan.kind == "inplace":
            self._activate_inplace(revision, shape, state)
            return
        standby = plan.target  # its tensors (and flat buffer) carry over to the new entry
        new = LoadedModel(
            revision,
            module,
            self.device,
            shape,
            targets=standby.targets if standby else {},
            flat=standby.flat if standby else None,
            flat_layout=standby.flat_layout if standby else None,
        )
        with self._cond:
            old, self._current = self._current, new
            if old is None:
                return
            old.retired = True
            busy = old.leases > 0
            if busy:
                self._draining = old
        if not busy:
            self._release(old)

    def _activate_inplace(
        self, revision: Revision, shape: tuple[int, ...], state: StateDict
    ) -> None:
        with self._cond:
            old = self._current
            assert old is not None
            self._held = True
            try:
                self._cond.wait_for(lambda: old.leases == 0)
                self._copy_into(old.targets, state)
                old.retired = True
                old.module_handed_on = True
                self._current = LoadedModel(
                    revision,
                    old.module,
                    self.device,
                    shape,
                    targets=old.targets,
                    flat=old.flat,
                    flat_layout=old.flat_layout,
                )
            finally:
                self._held = False
                self._cond.notify_all()


def check_state_dict(expected: StateDict, state: StateDict, revision: Revision) -> None:
    """Strict loading's checks, with a message naming the checkpoint and the model."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", extra),
            ("wrong shapes", shapes),
        )
        if items
    ]
    if problems:
        raise StateDictMismatch(
            f"checkpoint {revision.checkpoint.uri} does not fit {revision.model.architecture}: "
            + "; ".join(problems)
        )


def _flattenable(targets: StateDict, state: StateDict, host: torch.Tensor) -> bool:
    """Every target matches its staged view's dtype, views share the flat host buffer,
    and no two targets share storage (tied weights must stay tied)."""
    storage = host.untyped_storage().data_ptr()
    pointers = {t.untyped_storage().data_ptr() for t in targets.values()}
    return len(pointers) == len(targets) and all(
        targets[name].dtype == src.dtype
        and src.untyped_storage().data_ptr() == storage
        and src.is_contiguous()
        for name, src in state.items()
    )


def _rebind(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Point parameter or buffer ``name`` of ``module`` at ``tensor``."""
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name)
    if attr in owner._parameters and owner._parameters[attr] is not None:
        owner._parameters[attr].data = tensor  # type: ignore[union-attr]
    else:
        owner._buffers[attr] = tensor


def probe_input(input_shape: tuple[int, ...]) -> torch.Tensor:
    """A fixed pseudo-random batch of one, the same on every swap."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand((1, *input_shape), generator=generator)


def check_probe(output: torch.Tensor, revision: Revision) -> tuple[int, ...]:
    if output.ndim == 0 or output.shape[0] != 1:
        raise ValidationFailed(
            f"revision {revision.revision}: probe output shape {tuple(output.shape)} has no "
            "batch dimension of 1 for a batch of one"
        )
    if output.is_floating_point() and not bool(torch.isfinite(output).all()):
        raise NonFiniteWeights(
            f"revision {revision.revision}: probe output holds NaN or infinity; "
            "the checkpoint's weights are broken"
        )
    return tuple(output.shape)


def _as_tensor(output: object, what: str) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise ValidationFailed(f"{what}: the model returned {type(output).__name__}, not a tensor")
    return output


def _stop_if(cancelled: Callable[[], bool], revision: Revision) -> None:
    if cancelled():
        raise Superseded(f"revision {revision.revision} superseded by a newer one while loading")
