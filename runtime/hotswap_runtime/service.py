"""The runtime assembled from its parts: store, swapper, the pod's control path,
inference and the data plane that the transports (server.py) serve."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from hotswap_contract.wire import configmap_name
from hotswap_runtime.budget import MemoryBudget
from hotswap_runtime.checkpoint.peers.transfer import PeerTransfer
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.control.desired import Reconciler
from hotswap_runtime.control.journal import LoadJournal
from hotswap_runtime.control.kube import api_client
from hotswap_runtime.control.pod import PodControl, PodIdentity
from hotswap_runtime.control.watcher import FileWatcher
from hotswap_runtime.devices import resolve_device, runtime_env
from hotswap_runtime.serving.dataplane import Batching, DataPlane
from hotswap_runtime.serving.inference import Engine
from hotswap_runtime.serving.metrics import Metrics
from hotswap_runtime.settings import Settings
from hotswap_runtime.swap.footprint import ForwardLimits
from hotswap_runtime.swap.shadow import ShadowTap
from hotswap_runtime.swap.swapper import Swapper

log = logging.getLogger(__name__)


class Runtime:
    """One served model: inference on leases, swaps driven by model.json."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.pod = settings.pod_name or "local"
        self.peers = PeerTransfer.of(settings, self.pod)
        peering = self.peers.peering if self.peers is not None else None
        self.store = CheckpointStore.from_settings(settings, peering)
        tap = ShadowTap()  # the engine offers answered batches, the swapper compares
        self.swapper = Swapper(
            self.store,
            self.device,
            settings.allowed_architectures,
            settings.swap_mode,
            max_model_bytes=settings.max_model_bytes,
            tap=tap,
            forward=ForwardLimits(
                settings.max_forward_batch, settings.forward_memory_bytes, settings.infer_workers
            ),
            memory_format=settings.memory_format,
            freeze=settings.freeze,
        )
        self.metrics = Metrics(self.device)
        self.budget = MemoryBudget(
            settings.request_memory_bytes,
            settings.request_wait_seconds,
            settings.overload_unready_seconds,
        )
        self.engine = _engine(settings, self.swapper, self.metrics, tap)
        self.swapper.serving_idle = self.engine.idle
        self.control = PodControl(
            self.swapper,
            _identity(settings, self.pod, str(self.device)),
            [self.metrics],
            journal=LoadJournal(settings.cache_dir),
        )
        self.reconciler: Reconciler = self.control.reconciler
        self.dataplane = DataPlane(
            settings.model_name,
            str(self.device),
            Batching(settings.max_batch_size, settings.max_queue_delay_us),
            self.swapper,
            self.reconciler.status,
            self.engine,
            self.budget,
        )
        self.api: Any = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        self.engine.start()
        if self.peers is not None:
            self.peers.server.start()
        self._connect()
        self.control.start()
        if self.settings.config_dir is not None:
            watcher = FileWatcher(
                self.settings.config_dir, self.reconciler, self.pod, self.settings.resync_seconds
            )
            self._tasks.append(asyncio.create_task(watcher.run(self._stop)))

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 5)
        self.control.stop()
        self.engine.stop()
        if self.peers is not None:
            self.peers.server.stop()

    def _connect(self) -> None:
        s = self.settings
        if not (s.pod_name and s.pod_namespace):
            return
        try:
            self.api = api_client(s.kubeconfig)
        except Exception as exc:
            log.warning("Kubernetes API unavailable (%s): reports and API watch are off", exc)
        if self.api is None:
            return
        configmap = (s.configmap or configmap_name(s.model_name)) if s.api_watch else None
        self.control.connect(self.api, configmap)
        if self.peers is not None:
            self.peers.source.api = self.api


def _engine(settings: Settings, swapper: Swapper, metrics: Metrics, tap: ShadowTap) -> Engine:
    return Engine(
        swapper,
        metrics,
        workers=settings.infer_workers,
        max_batch_size=settings.max_batch_size,
        max_queue_delay=settings.max_queue_delay_us / 1e6,
        codec_threads=settings.codec_threads,
        tap=tap,
    )


def _identity(settings: Settings, pod: str, device: str) -> PodIdentity:
    return PodIdentity(
        pod=pod,
        namespace=settings.pod_namespace or "",
        model=settings.model_name,
        uid=settings.pod_uid,
        device=device,
        env=runtime_env(),
    )
