"""Running decoded requests on the model: codec threads, inference workers, batching.

Both protocols serve a request the same way (``Engine.serve``): decode in a codec
thread, queue for an inference worker, encode in a codec thread; the event loop only
moves bytes. A worker takes the next request and, with dynamic batching on
(``max_batch_size`` > 1), gathers more for up to ``max_queue_delay`` seconds while the
batch has room, as Triton's dynamic batcher does. A batch runs whole on one lease: one
revision computes every answer in it and each answer names that revision. A batch
never holds more samples than the serving model's forward batch (footprint.py: sized
at load so that the workers' forward passes stay under HOTSWAP_FORWARD_MEMORY_BYTES).
A request larger than that runs alone, split into forward passes of at most the forward
batch on the same lease (one revision computes the whole answer); their outputs are
copied into one answer as they come. A request that fits one pass runs as before, with
no copy. A request whose answer alone would take more than a worker may hold for one
is refused (RequestTooLarge, naming the most samples a request may have).

Per request the engine records where the time went: ``decode``, ``queue`` (waiting for
a worker, the batch and the lease), ``forward`` (the batch's forward pass) and
``encode``, in ``hotswap_request_phase_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch

from hotswap_contract.redact import clip
from hotswap_runtime.errors import (
    HotswapError,
    InferenceFailed,
    ModelNotReady,
    RequestTooLarge,
    VersionConflict,
    http_status,
)
from hotswap_runtime.serving.codec import InferRequest, check_shape
from hotswap_runtime.serving.metrics import Metrics
from hotswap_runtime.swap.footprint import Footprint
from hotswap_runtime.swap.leases import LoadedModel
from hotswap_runtime.swap.shadow import ShadowTap
from hotswap_runtime.swap.swapper import Swapper

log = logging.getLogger(__name__)
T = TypeVar("T")
SWITCH_INTERVAL = 0.001


@dataclass(frozen=True)
class Answer:
    """The model's output for one request, and what computed it."""

    version: str
    output: torch.Tensor
    queued: float
    forward: float
    batch: int  # samples in the forward pass that computed it


@dataclass
class _Job:
    request: InferRequest
    done: Callable[[Answer | HotswapError], None]  # called once, on the worker thread
    enqueued: float


class Engine:
    """Inference workers on leases of ``swapper``'s current model, and codec threads."""

    def __init__(
        self,
        swapper: Swapper,
        metrics: Metrics,
        *,
        workers: int = 1,
        max_batch_size: int = 1,
        max_queue_delay: float = 0.0,
        codec_threads: int = 2,
        tap: ShadowTap | None = None,
    ) -> None:
        self.swapper = swapper
        self.metrics = metrics
        self.tap = tap  # answered batches, sampled for a shadow comparison
        self._in_flight = 0  # requests between serve()'s start and end (event loop only)
        self.workers = workers
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self._codec = ThreadPoolExecutor(codec_threads, thread_name_prefix="codec")
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        # A forward pass gives the GIL up inside every op and needs it back after; with
        # the event loop or a codec thread busy in Python, the default 5 ms switch
        # interval can add 5 ms per op. 1 ms keeps that wait short.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        for number in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"infer-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(10)
        self._threads.clear()
        self._codec.shutdown(wait=False, cancel_futures=True)

    def idle(self) -> bool:
        """Whether no request is being decoded, waits, runs or is encoded now."""
        return self._in_flight == 0

    # ---- the event loop's side ------------------------------------------------------

    async def serve(
        self,
        decode: Callable[[], InferRequest],
        encode: Callable[[str, torch.Tensor, InferRequest], T],
    ) -> tuple[T, str]:
        """Decode, run and encode one request; the encoded answer and its version.

        The stages hand over thread to thread (codec -> worker -> codec) and wake the
        event loop once, with the encoded answer or the error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[T, Answer]] = loop.create_future()
        start = time.perf_counter()
        marks: dict[str, float] = {}
        decoded: list[InferRequest] = []

        def settle(outcome: tuple[T, Answer] | BaseException) -> None:
            def on_loop() -> None:
                if future.done():
                    return  # the client went away
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(on_loop)

        def decoding() -> None:
            try:
                request = decode()
            except HotswapError as exc:
                settle(exc)
                return
            except Exception:
                log.exception("decoding a request failed")
                settle(InferenceFailed("the request could not be decoded"))
                return
            decoded.append(request)
            marks["decoded"] = time.perf_counter()
            self._queue.put(_Job(request, answered, marks["decoded"]))

        def answered(outcome: Answer | HotswapError) -> None:
            if isinstance(outcome, HotswapError):
                settle(outcome)
                return
            try:
                self._codec.submit(encoding, outcome)
            except RuntimeError:  # shut down
                settle(ModelNotReady("the runtime is shutting down"))

        def encoding(answer: Answer) -> None:
            marks["computed"] = time.perf_counter()
            try:
                settle((encode(answer.version, answer.output, decoded[0]), answer))
            except HotswapError as exc:
                settle(exc)
            except Exception:
                log.exception("encoding an answer failed")
                settle(InferenceFailed("the answer could not be encoded"))

        self._in_flight += 1
        try:
            self._codec.submit(decoding)
            body, answer = await future
        except HotswapError as exc:
            self.metrics.request("none", http_status(exc), time.perf_counter() - start)
            raise
        finally:
            self._in_flight -= 1
        end = time.perf_counter()
        self.metrics.request(answer.version, 200, end - start)
        self.metrics.phases(
            decode=marks["decoded"] - start,
            queue=answer.queued,
            forward=answer.forward,
            encode=end - marks["computed"],
        )
        return body, answer.version

    # ---- worker threads -------------------------------------------------------------

    def _work(self) -> None:
        carried: _Job | None = None
        while True:
            job = carried if carried is not None else self._queue.get()
            carried = None
            if job is None:
                return
            batch, carried, stopping = self._gather(job)
            try:
                self._run(batch)
            except BaseException:  # never lose a worker: fail the batch, keep serving
                log.exception("inference worker failed a batch")
                for each in batch:
                    _resolve(each, InferenceFailed("the inference worker failed"))
            # Drop the batch now, not at the next request: its tensors may view request
            # bodies whose memory the budget has already handed to the next request.
            del job, batch
            if stopping:
                return

    def _gather(self, first: _Job) -> tuple[list[_Job], _Job | None, bool]:
        """``first`` and the requests that join its batch; one left over; stop seen."""
        batch = [first]
        total = first.request.batch
        limit = self._batch_limit()
        if limit <= 1:
            return batch, None, False
        deadline = time.perf_counter() + self.max_queue_delay
        while total < limit:
            remaining = deadline - time.perf_counter()
            try:
                nxt = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if nxt is None:
                return batch, None, True
            if total + nxt.request.batch > limit:
                return batch, nxt, False
            batch.append(nxt)
            total += nxt.request.batch
        return batch, None, False

    def _batch_limit(self) -> int:
        """Samples a gathered batch may hold: ``max_batch_size``, and no more than the
        serving model's forward batch."""
        current = self.swapper.current()
        footprint = current.footprint if current is not None else None
        if footprint is None:
            return self.max_batch_size
        return min(self.max_batch_size, footprint.forward_batch)

    def _run(self, batch: list[_Job]) -> None:
        """Run ``batch`` on one lease: together when it fits one forward pass, else each
        request on its own, split into passes of at most the forward batch. Answers go
        out once the lease has ended."""
        finishes: list[Callable[[], None]] = []
        try:
            with self.swapper.lease() as model:
                version = str(model.revision.revision)
                ready = [job for job in batch if _admitted(job, version, model)]
                limit = _forward_batch(model)
                total = sum(job.request.batch for job in ready)
                groups = [ready] if total <= limit else [[job] for job in ready]
                for group in groups:
                    if group:
                        finishes.append(self._compute(group, model, version, limit))
        except HotswapError as exc:  # no lease: nothing was resolved yet
            for job in batch:
                _resolve(job, exc)
        for finish in finishes:
            finish()

    def _compute(
        self, group: list[_Job], model: LoadedModel, version: str, limit: int
    ) -> Callable[[], None]:
        """The forward pass(es) of ``group``; what hands each request its answer."""
        tensors = [job.request.tensor for job in group]
        x = tensors[0] if len(tensors) == 1 else torch.cat(tensors)
        began = time.perf_counter()
        try:
            output = _forward_all(model, x, limit)
        except Exception as exc:
            failure = (
                exc.with_traceback(None)  # its frames hold the pass's tensors
                if isinstance(exc, HotswapError)
                else InferenceFailed(f"the model failed on this input ({clip(type(exc).__name__)})")
            )
            return lambda: _fail(group, failure)
        took = time.perf_counter() - began
        return lambda: self._answer(group, version, x, output, (began, took, limit))

    def _answer(
        self,
        group: list[_Job],
        version: str,
        x: torch.Tensor,
        output: torch.Tensor,
        timing: tuple[float, float, int],
    ) -> None:
        """Hand each request of ``group`` its rows of ``output``."""
        began, took, limit = timing
        samples = int(x.shape[0])
        for start in range(0, samples, limit):
            self.metrics.batch(min(limit, samples - start))
        if len(group) > 1 and (output.ndim == 0 or output.shape[0] != samples):
            _fail(
                group,
                InferenceFailed(
                    f"the model's output has batch {list(output.shape)[:1]} for an input "
                    f"batch of {samples}; dynamic batching needs outputs with the input's "
                    "batch size"
                ),
            )
            return
        offset = 0
        for job in group:
            size = job.request.batch
            piece = output if len(group) == 1 else output[offset : offset + size]
            offset += size
            queued = began - job.enqueued
            _resolve(job, Answer(version, piece, queued, took, min(samples, limit)))
        if self.tap is not None:  # after every answer went out
            self.tap.offer(version, x, output)


def _forward_batch(model: LoadedModel) -> int:
    """Most samples in one forward pass of ``model`` (footprint.py)."""
    footprint = model.footprint
    return sys.maxsize if footprint is None else footprint.forward_batch


def _admitted(job: _Job, version: str, model: LoadedModel) -> bool:
    """Whether ``job`` may run on ``model``; else it is answered with the refusal."""
    problem = _refusal(job.request, version, model.revision.model.input_shape)
    if problem is None:
        problem = _answer_refusal(job.request, model.footprint)
    if problem is not None:
        _resolve(job, problem)
    return problem is None


def _answer_refusal(request: InferRequest, footprint: Footprint | None) -> HotswapError | None:
    """A request whose answer would take more than a worker may hold for one."""
    if footprint is None or request.batch <= footprint.max_answer_samples:
        return None
    return RequestTooLarge(
        f"a request of {request.batch} samples has an answer of "
        f"{request.batch * footprint.output_bytes} bytes ({footprint.output_bytes} per "
        "sample), over what an inference worker may hold for one (half of "
        "HOTSWAP_FORWARD_MEMORY_BYTES / HOTSWAP_INFER_WORKERS); send at most "
        f"{footprint.max_answer_samples} samples per request"
    )


def _refusal(
    request: InferRequest, version: str, input_shape: tuple[int, ...]
) -> HotswapError | None:
    if request.version is not None and request.version != version:
        return VersionConflict(
            f"version {clip(request.version, 40)} is not serving; version {version} is"
        )
    try:
        check_shape(request.tensor, input_shape)
    except HotswapError as exc:
        return exc
    return None


def _fail(group: list[_Job], failure: HotswapError) -> None:
    for job in group:
        _resolve(job, failure)


def _resolve(job: _Job, outcome: Answer | HotswapError) -> None:
    try:
        job.done(outcome)
    except Exception:  # a waiter's hand-over must never take the worker down
        log.exception("handing an answer over failed")


def _forward_all(model: LoadedModel, x: torch.Tensor, limit: int) -> torch.Tensor:
    """``model``'s answer to ``x``: one forward pass when ``x`` has at most ``limit``
    samples (no copy), else passes of ``limit`` samples whose outputs are copied into
    one answer as they come."""
    samples = int(x.shape[0])
    if samples <= limit:
        return _forward(model.network(samples), x, model.device, model.dtype)
    answer: torch.Tensor | None = None
    for start in range(0, samples, limit):
        size = min(limit, samples - start)
        piece = _forward(model.network(size), x[start : start + size], model.device, model.dtype)
        if answer is None and piece.ndim > 0:
            answer = torch.empty((samples, *piece.shape[1:]), dtype=piece.dtype)
        if answer is None or piece.shape != (size, *answer.shape[1:]):
            raise InferenceFailed(
                f"the model's output has shape {list(piece.shape)} for a forward pass of "
                f"{size} samples; a request of more than {limit} samples (the forward batch) "
                "runs in several passes, which needs outputs of the input's batch size"
            )
        answer[start : start + size] = piece
        del piece
    assert answer is not None
    return answer


def _forward(
    module: torch.nn.Module | torch.jit.ScriptModule,
    x: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    with torch.inference_mode():
        out = module(x.to(device, dtype))  # FP32 requests into a float16/bfloat16 model
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"model returned {type(out).__name__}, not a tensor")
        return out.float().cpu()
