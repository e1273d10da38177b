"""The swapper makes a revision serve, or fails leaving the serving model untouched.

A swap runs off the serving path: fetch -> parse -> load -> validate -> activate.

* parse: first the target model's layout (names, dtypes, shapes) and size: from the
  serving or standby model when the spec is the same, else by building the network on
  the meta device (``models.size_model``), which refuses a model over
  ``max_model_bytes``. The checkpoint is then read against that layout (weights.py):
  nothing is allocated for a file that does not fit it.
* load, where the weights go:
  - ``standby``: the previous model, once its last request has finished, is kept as a
    standby; the new weights are copied into it (one bulk copy when its tensors live
    in one flat buffer laid out like the checkpoint; on CUDA from pinned host buffers
    on a side stream). Before each use its tensors are checked: same layout, and no
    two of them share memory unless the architecture ties them.
  - ``fresh``: no usable standby (first load, new architecture, the previous model
    still busy past a short wait): build the network (under an allocation budget) and
    ``load_state_dict(strict)``.
  - ``inplace``: on CUDA when the GPU cannot hold two copies (or when configured): the
    new weights are validated on a CPU copy, then new requests are briefly held, the
    weights are copied into the live tensors, and requests resume (leases.py).
* validate: probes.py; the probe also sizes the model's activations, from which the
  forward batch is derived (footprint.py), logged and kept with the model.

Any failure before ``activate`` leaves the serving model untouched. Whatever it was
(a factory's or a model's SystemExit included; KeyboardInterrupt excepted), ``swap_to``
raises a SwapError with a short reason, after releasing the staging buffers, trimming
the heap and handing back a standby it took; no state of a failed swap is inherited.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hotswap_contract.redact import clip, redact_uri
from hotswap_contract.wire import SWAP_PHASES, AnalysisFigures, Fetched, Revision, ShadowFigures
from hotswap_runtime.checkpoint.finite import non_finite
from hotswap_runtime.checkpoint.layouts import (
    Expected,
    FlatLayout,
    bind_flat,
    bindable,
    is_bound,
    layout_of,
    named,
    overlaps,
)
from hotswap_runtime.checkpoint.manifest import LocalCheckpoint, is_manifest
from hotswap_runtime.checkpoint.staging import Staging
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.checkpoint.streaming import StreamParser
from hotswap_runtime.checkpoint.weights import SAFETENSORS, Parsed, checkpoint_format, read_local
from hotswap_runtime.control.target import PhaseClock
from hotswap_runtime.devices import (
    copy_flat,
    copy_tensors,
    free_bytes,
    is_cuda,
    release_cached,
    release_host_memory,
)
from hotswap_runtime.errors import (
    EvaluationFailed,
    FetchError,
    FormatError,
    NonFiniteWeights,
    StateDictMismatch,
    Superseded,
    SwapError,
    ValidationFailed,
)
from hotswap_runtime.settings import DEFAULT_MAX_CHECKPOINT_BYTES
from hotswap_runtime.swap.evaluation import EvaluationSet, Scores, judge, key_of
from hotswap_runtime.swap.footprint import HEADROOM, Footprint, ForwardLimits
from hotswap_runtime.swap.frozen import Freezer, Frozen
from hotswap_runtime.swap.leases import Leases, LoadedModel
from hotswap_runtime.swap.memory_format import to_serving_format
from hotswap_runtime.swap.models import (
    BUILD_FACTOR,
    Blueprint,
    build_bounded,
    size_model,
    torch_dtype,
)
from hotswap_runtime.swap.probes import forward_passes, validate
from hotswap_runtime.swap.shadow import Comparison, Hooks, ShadowTap, compare, skipped_figures

__all__ = ["PHASES", "LoadedModel", "PhaseClock", "Swapper"]

log = logging.getLogger(__name__)

PHASES = SWAP_PHASES
ROOM_FACTOR = 1.25  # free GPU memory needed for a second copy, as a multiple of its size
DEFAULT_MAX_MODEL_BYTES = DEFAULT_MAX_CHECKPOINT_BYTES
# what an unexpected exception in each phase is reported as
_CRASHES: dict[str, type[SwapError]] = {
    "fetch": FetchError,
    "parse": FormatError,
    "validate": ValidationFailed,
}


@dataclass
class _Steps:
    """The phase clock, and which phase a failure happened in."""

    clock: PhaseClock
    phase: str = "fetch"

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        self.phase = phase
        with self.clock(phase):
            yield


@dataclass(frozen=True)
class _Attempt:
    """The reconciler's side of one swap: whether to stop, and whom to tell of progress."""

    cancelled: Callable[[], bool]
    progress: Callable[[], None]


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
        max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
        tap: ShadowTap | None = None,
        forward: ForwardLimits | None = None,
        memory_format: str = "auto",
        freeze: str = "auto",
    ) -> None:
        self.store = store
        self.device = device
        self.allowed = tuple(allowed)  # the admin's architecture allowlist (policy.py)
        self.mode = mode
        self.drain_timeout = drain_timeout
        self.max_model_bytes = max_model_bytes
        self.forward = forward or ForwardLimits()  # bounds forward passes (footprint.py)
        self.memory_format = memory_format  # the format networks serve in (memory_format.py)
        self._freezer = Freezer(freeze, device)  # the graphs revisions serve on (frozen.py)
        self._leases = Leases(device, keep_standby=mode != "inplace")
        self._staging = Staging(pin=is_cuda(device))
        self._stream: torch.cuda.Stream | None = (
            torch.cuda.Stream(device) if is_cuda(device) else None  # type: ignore[no-untyped-call]
        )
        self.last_kind = ""
        self.tap = tap or ShadowTap()  # sampled answers, for shadow comparisons
        self.serving_idle: Callable[[], bool] = lambda: True  # set to the engine's
        self._scores = Scores()
        self._analysis = AnalysisFigures()

    # ---- serving side -----------------------------------------------------------------

    def current(self) -> LoadedModel | None:
        return self._leases.current()

    def release_memory(self) -> None:
        release_host_memory()

    def analysis(self) -> AnalysisFigures | None:
        """What judging the last target found (evaluation set, shadow), if anything."""
        found = self._analysis
        return found if found.evaluation is not None or found.shadow is not None else None

    def fetched(self) -> Fetched | None:
        """Where the bytes of the last checkpoint fetched came from."""
        return self.store.last_fetched

    def lease(self) -> contextlib.AbstractContextManager[LoadedModel]:
        """The current model, guaranteed not to be released until the block ends."""
        return self._leases.lease()

    @property
    def held(self) -> bool:
        """Whether new requests are held (only during an in-place copy)."""
        return self._leases.held

    # ---- swap side --------------------------------------------------------------------

    def swap_to(
        self,
        revision: Revision,
        cancelled: Callable[[], bool] = lambda: False,
        clock: PhaseClock | None = None,
        progress: Callable[[], None] = lambda: None,
    ) -> PhaseClock:
        """Make ``revision`` serve, or raise SwapError leaving the current model serving.
        ``progress`` is called when the analysis figures change while it runs."""
        clock = clock or PhaseClock()
        steps = _Steps(clock)
        self._analysis = AnalysisFigures()
        try:
            self._protect(revision)
            self._swap(revision, _Attempt(cancelled, progress), steps)
            self._protect(revision)
        except BaseException as exc:
            traceback.clear_frames(exc.__traceback__)  # drop the attempt's tensors now
            self._after_failure(keep_staging=isinstance(exc, Superseded))
            if isinstance(exc, SwapError | KeyboardInterrupt):
                raise
            raise _crashed(steps.phase, revision, exc) from None
        return clock

    def _swap(self, revision: Revision, attempt: _Attempt, steps: _Steps) -> None:
        cancelled = attempt.cancelled
        with steps("parse"):  # the layout first: a download is parsed as it arrives
            blueprint = self._blueprint(revision)
            parser = self._parser(revision, blueprint)
        with steps("fetch"):
            local = self.store.fetch_checkpoint(revision.checkpoint, cancelled, parser)
        _stop_if(cancelled, revision)
        with steps("parse"):
            parsed = self._parse(local, revision, blueprint, parser)
        _stop_if(cancelled, revision)
        plan = _Plan("fresh")
        try:
            with steps("load"):
                plan = self._plan(revision, blueprint)
                self.last_kind = plan.kind
                module = self._load(plan, revision, parsed, blueprint)
            _stop_if(cancelled, revision)
            with steps("validate"):
                shape, footprint = self._validate(module, revision, plan)
                self._evaluate(module, revision, plan, attempt)
                frozen = self._freeze(module, revision, plan, blueprint.nbytes, footprint)
            _stop_if(cancelled, revision)
            if revision.analysis is not None and revision.analysis.shadow is not None:
                with steps("shadow"):
                    self._shadow(module, revision, plan, attempt, footprint)
            with steps("activate"):
                self._activate(plan, revision, module, (shape, footprint, frozen), parsed)
        except BaseException:
            if plan.target is not None:
                self._leases.release(plan.target)
            raise

    def _after_failure(self, keep_staging: bool) -> None:
        """Nothing of a failed swap stays allocated: staging, freed modules, heap. A
        superseded load keeps the staging buffers (sized by a checked layout) for the
        next one."""
        if not keep_staging:
            self._staging.release()
        gc.collect()
        release_cached(self.device)
        release_host_memory()

    def _protect(self, loading: Revision) -> None:
        current = self._leases.current()
        shas = {loading.checkpoint.sha256}
        if current is not None:
            shas.add(current.revision.checkpoint.sha256)
        self.store.protect(shas)

    # ---- parse ------------------------------------------------------------------------

    def _blueprint(self, revision: Revision) -> Blueprint:
        """The target model's layout and size, before anything is built or read."""
        known = self._leases.known(revision.model)
        if known is not None:
            return Blueprint(revision.model, known.layout, known.nbytes)
        return size_model(revision.model, self.allowed, self.max_model_bytes)

    def _parser(self, revision: Revision, blueprint: Blueprint) -> StreamParser | None:
        """A parser for a safetensors download (one file or shards), or None (.pt)."""
        uri = revision.checkpoint.uri
        try:  # a file type refused here is refused after the fetch, as before
            streams = is_manifest(uri) or checkpoint_format(uri) == SAFETENSORS
        except FormatError:
            streams = False
        return StreamParser(_expected(revision, blueprint), self._staging) if streams else None

    def _parse(
        self,
        local: LocalCheckpoint,
        revision: Revision,
        blueprint: Blueprint,
        parser: StreamParser | None,
    ) -> Parsed:
        expected = _expected(revision, blueprint)
        streamed = parser.result(len(local.files)) if parser is not None else None
        if streamed is not None:  # parsed (and screened) while it downloaded, now verified
            assert parser is not None
            flat, layout, views = streamed
            parsed = Parsed({name: views[name] for name in expected.layout}, flat, layout)
            bad = parser.non_finite
        else:
            parsed = read_local(local, revision.checkpoint.uri, expected, self._staging)
            bad = non_finite(parsed.state)
        if bad:
            raise NonFiniteWeights(
                f"checkpoint {redact_uri(revision.checkpoint.uri)}: tensors hold NaN or "
                f"infinity: {named(bad)}"
            )
        return parsed

    # ---- load -------------------------------------------------------------------------

    def _plan(self, revision: Revision, blueprint: Blueprint) -> _Plan:
        current = self._leases.current()
        same_spec = current is not None and current.revision.model == revision.model
        if self.mode == "inplace" and same_spec:
            return _Plan("inplace")
        standby = self._leases.take_standby(revision.model, self.drain_timeout)
        if standby is not None and not _sound(standby, blueprint):
            self._leases.discard(standby)
            standby = None
        if standby is not None:
            return _Plan("standby", standby)
        if self.mode == "auto" and same_spec and not self._room_for(blueprint.nbytes):
            return _Plan("inplace")
        return _Plan("fresh")

    def _device_for(self, plan: _Plan) -> torch.device:
        """Where the new weights are built and judged: an in-place swap validates a CPU
        copy before it overwrites the live tensors."""
        return torch.device("cpu") if plan.kind == "inplace" else self.device

    def _room_for(self, nbytes: int) -> bool:
        free = free_bytes(self.device)
        return free is None or free >= ROOM_FACTOR * nbytes

    def _load(
        self, plan: _Plan, revision: Revision, parsed: Parsed, blueprint: Blueprint
    ) -> nn.Module:
        if plan.kind == "standby":
            assert plan.target is not None
            self._fill(plan.target, parsed)
            return plan.target.module
        device = self._device_for(plan)
        module = self._build(revision, device, blueprint)
        module = to_serving_format(module, revision.model, device, self.memory_format)
        if layout_of(module.state_dict()) != blueprint.layout:
            raise StateDictMismatch(
                f"{revision.model.architecture} built a different set of tensors than when "
                "it was sized; its factory must build the same model every time"
            )
        with torch.no_grad():
            module.load_state_dict(parsed.state, strict=True)
        return module

    def _build(self, revision: Revision, device: torch.device, blueprint: Blueprint) -> nn.Module:
        if blueprint.module is not None and device.type == "cpu":
            return blueprint.module  # sizing had to build it on the CPU: reuse it
        limit = BUILD_FACTOR * self.max_model_bytes
        return build_bounded(revision.model, device, self.allowed, limit)

    def _fill(self, model: LoadedModel, parsed: Parsed) -> None:
        """Load ``parsed`` into a standby: on the CPU by handing it the staging buffer
        (no copy); else one bulk copy when its tensors live in one flat buffer laid out
        like the checkpoint's data (set up when needed), else per tensor."""
        layout = parsed.flat_layout
        if parsed.flat is not None and layout is not None:
            if self._adopt(model, parsed.flat, layout):
                return
            if self._flat_bound(model, layout):
                assert model.flat is not None
                copy_flat(model.flat, parsed.flat, self._stream)
                return
        copy_tensors(model.targets, parsed.state, self._stream)

    def _adopt(self, model: LoadedModel, flat: torch.Tensor, layout: FlatLayout) -> bool:
        """On the CPU, point a flat-bound standby's tensors at the parsed buffer itself
        and give its old buffer to staging for the next swap; whether that was possible.
        (A standby's first reuse binds it to a buffer of its own and copies, so that
        staging keeps one: three buffers then rotate, and the process does not grow.)"""
        cpu = self.device.type == "cpu" and not self._staging.pin
        old = model.flat
        if not cpu or old is None or old.numel() != flat.numel():
            return False
        if not self._staging.holds(flat) or not bindable(model.targets, layout):
            return False
        model.flat, model.flat_layout = None, None
        model.flat, model.targets = bind_flat(model.module, layout, self.device, flat)
        model.flat_layout = layout
        self._staging.exchange(flat, old)
        return True

    def _flat_bound(self, model: LoadedModel, layout: FlatLayout) -> bool:
        """Whether ``model``'s tensors are (now) the views of one flat buffer laid out as
        ``layout``; rebinds them when they can be and the device has room."""
        flat = model.flat
        if (
            flat is not None
            and model.flat_layout == layout
            and is_bound(model.targets, flat, layout)
        ):
            return True
        if not bindable(model.targets, layout) or not self._room_for(layout.nbytes):
            return False
        model.flat, model.flat_layout = None, None
        model.flat, model.targets = bind_flat(model.module, layout, self.device)
        model.flat_layout = layout
        return True

    # ---- validate and activate --------------------------------------------------------

    def _validate(
        self, module: nn.Module, revision: Revision, plan: _Plan
    ) -> tuple[tuple[int, ...], Footprint]:
        """The probe's output shape, and the footprint sized from its forward pass."""
        device = self._device_for(plan)
        current = self._leases.current()
        same_spec = current is not None and current.revision.model == revision.model
        serving_shape = current.output_shape if current is not None and same_spec else None
        shape, peak = validate(
            module, revision, device, self._stream, serving_shape, self.store.fetch
        )
        footprint = self.forward.footprint(peak, shape, f"revision {revision.revision}")
        log.info(
            "revision %d: %d bytes of activations per sample (probe peak x%d), %d bytes "
            "of answer per sample: forward passes of at most %d samples, answers of at "
            "most %d",
            revision.revision,
            footprint.activation_bytes,
            HEADROOM,
            footprint.output_bytes,
            footprint.forward_batch,
            footprint.max_answer_samples,
        )
        return shape, footprint

    def _freeze(
        self, module: nn.Module, revision: Revision, plan: _Plan, nbytes: int, footprint: Footprint
    ) -> Frozen | None:
        """The graph ``revision`` serves on (frozen.py); none for an in-place swap, whose
        checked copy is not what serves."""
        if plan.kind == "inplace":
            return None
        what = f"revision {revision.revision}"
        return self._freezer(module, revision.model, nbytes, footprint.forward_batch, what)

    def _evaluate(
        self, module: nn.Module, revision: Revision, plan: _Plan, attempt: _Attempt
    ) -> None:
        """The evaluation gate (evaluation.py); its figures are reported pass or fail."""
        evaluation = revision.validation.evaluation if revision.validation else None
        if evaluation is None:
            return
        device = self._device_for(plan)
        dataset = EvaluationSet(evaluation, revision.model, self.store.fetch)
        accuracy = dataset.accuracy(module, revision.model, device, self._stream)
        figures, reason = judge(revision, accuracy, dataset.samples, self._serving_score(dataset))
        self._analysis = self._analysis.model_copy(update={"evaluation": figures})
        attempt.progress()
        if reason is not None:
            raise EvaluationFailed(reason)

    def _serving_score(self, dataset: EvaluationSet) -> tuple[int, float] | None:
        """The serving revision's accuracy on ``dataset``, computed once and kept."""
        current = self._leases.current()
        if current is None or current.revision.model.input_shape != dataset.inputs.shape[1:]:
            return None
        with self._leases.lease() as serving:
            key = key_of(serving.revision, dataset.spec)
            model = serving.revision.model
            score = self._scores.get(
                key, lambda: dataset.accuracy(serving.module, model, serving.device, None)
            )
            return serving.revision.revision, score

    def _shadow(
        self,
        module: nn.Module,
        revision: Revision,
        plan: _Plan,
        attempt: _Attempt,
        footprint: Footprint,
    ) -> None:
        """Score sampled live requests with the new weights before they serve (shadow.py),
        in passes of at most their forward batch. Only a newer revision of the same input
        shape is compared with what serves."""
        assert revision.analysis is not None and revision.analysis.shadow is not None
        spec = revision.analysis.shadow
        current = self._leases.current()
        if (
            current is None
            or current.revision.revision >= revision.revision
            or (current.revision.model.input_shape != revision.model.input_shape)
        ):
            self._report_shadow(skipped_figures(revision.revision, spec), attempt)
            return
        device = self._device_for(plan)
        dtype = torch_dtype(revision.model)
        hooks = Hooks(
            candidate=lambda x: forward_passes(
                module, x.to(dtype), device, self._stream, footprint.forward_batch
            ),
            idle=self.serving_idle,
            stop=lambda: _stop_if(attempt.cancelled, revision),
            report=lambda figures: self._report_shadow(figures, attempt),
        )
        compare(
            Comparison.start(revision.revision, spec), self.tap, current.revision.revision, hooks
        )

    def _report_shadow(self, figures: ShadowFigures, attempt: _Attempt) -> None:
        self._analysis = self._analysis.model_copy(update={"shadow": figures})
        attempt.progress()

    def _activate(
        self,
        plan: _Plan,
        revision: Revision,
        module: nn.Module,
        probed: tuple[tuple[int, ...], Footprint, Frozen | None],
        parsed: Parsed,
    ) -> None:
        shape, footprint, frozen = probed
        if plan.kind == "inplace":
            self._leases.replace_in_place(
                lambda old: self._overwrite(old, revision, (shape, footprint), parsed)
            )
            return
        if plan.target is not None:  # the standby's module and tensors carry over
            new = plan.target.successor(revision, shape, footprint, frozen)
            plan.target.module_handed_on = True
        else:
            new = LoadedModel(
                revision, module, self.device, shape, footprint=footprint, frozen=frozen
            )
        self._leases.activate(new)

    def _overwrite(
        self,
        old: LoadedModel,
        revision: Revision,
        probed: tuple[tuple[int, ...], Footprint],
        parsed: Parsed,
    ) -> LoadedModel:
        """Copy validated weights into the live tensors (requests are held)."""
        old.targets = old.module.state_dict()
        if layout_of(old.targets) != old.layout or overlaps(old.targets, old.ties):
            raise SwapError(
                f"revision {revision.revision}: the serving model's tensors changed or share "
                "memory; not overwriting them in place"
            )
        copy_tensors(old.targets, parsed.state, self._stream)
        return old.successor(revision, *probed)


def _expected(revision: Revision, blueprint: Blueprint) -> Expected:
    spec = revision.model
    return Expected(blueprint.layout, spec.architecture, spec.cast_weights)


def _sound(standby: LoadedModel, blueprint: Blueprint) -> bool:
    """A standby is reused only if its tensors still have the model's layout and no two
    of them share memory unless the architecture tied them."""
    standby.targets = standby.module.state_dict()
    if layout_of(standby.targets) != blueprint.layout:
        log.warning(
            "standby of revision %d discarded: its tensors changed", standby.revision.revision
        )
        return False
    shared = overlaps(standby.targets, standby.ties)
    if shared:
        pairs = [f"{a}/{b}" for a, b in shared]
        log.warning(
            "standby of revision %d discarded: tensors share memory: %s",
            standby.revision.revision,
            named(pairs),
        )
        return False
    return True


def _crashed(phase: str, revision: Revision, exc: BaseException) -> SwapError:
    """An unexpected exception as the SwapError its phase reports, with a short reason."""
    log.debug("swap to revision %d: %s raised", revision.revision, phase, exc_info=exc)
    kind = _CRASHES.get(phase, SwapError)
    text = clip(str(exc), 160)
    return kind(
        f"revision {revision.revision}: {phase} failed: {type(exc).__name__}"
        + (f": {text}" if text else "")
    )


def _stop_if(cancelled: Callable[[], bool], revision: Revision) -> None:
    if cancelled():
        raise Superseded(f"revision {revision.revision} superseded by a newer one while loading")
