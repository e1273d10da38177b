"""The runtime assembled from its parts: store, swapper, reconciler, watchers, reporter."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from .budget import MemoryBudget
from .contract import PodReport, configmap_name
from .desired import Failure, Reconciler, Status, SwapRecord
from .devices import resolve_device
from .grpc_server import GrpcServer
from .inference import Engine
from .journal import LoadJournal
from .kube import api_client, runtime_env
from .metrics import Metrics
from .reporter import Reporter, pod_report
from .settings import Settings
from .store import CheckpointStore
from .swapper import Swapper
from .watcher import ApiWatcher, FileWatcher

log = logging.getLogger(__name__)


class Runtime:
    """One served model: inference on leases, swaps driven by model.json."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.store = CheckpointStore.from_settings(settings)
        self.swapper = Swapper(
            self.store,
            self.device,
            settings.allowed_architectures,
            settings.swap_mode,
            max_model_bytes=settings.max_model_bytes,
        )
        self.metrics = Metrics(self.device)
        self.budget = MemoryBudget(settings.request_memory_bytes)
        self.engine = Engine(
            self.swapper,
            self.metrics,
            workers=settings.infer_workers,
            max_batch_size=settings.max_batch_size,
            max_queue_delay=settings.max_queue_delay_us / 1e6,
            codec_threads=settings.codec_threads,
        )
        self.grpc: GrpcServer | None = None
        self.draining = False  # set on SIGTERM: not ready, still serving
        self.reconciler = Reconciler(
            self.swapper,
            [self.metrics, _StatusSink(self)],
            journal=LoadJournal(settings.cache_dir),
        )
        self.pod = settings.pod_name or "local"
        self.api: Any = None
        self.reporter: Reporter | None = None
        self.api_watcher: ApiWatcher | None = None
        self._env = runtime_env()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        self.engine.start()
        if self.settings.grpc_port:
            self.grpc = GrpcServer(self)
            await self.grpc.start()
        self._connect()
        self.reconciler.start()
        if self.reporter is not None:
            self.reporter.start()
        if self.api_watcher is not None:
            self.api_watcher.start()
        if self.settings.config_dir is not None:
            watcher = FileWatcher(
                self.settings.config_dir, self.reconciler, self.pod, self.settings.resync_seconds
            )
            self._tasks.append(asyncio.create_task(watcher.run(self._stop)))
        self.report(self.reconciler.status())

    async def stop(self) -> None:
        self._stop.set()
        if self.grpc is not None:
            await self.grpc.stop()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 5)
        if self.api_watcher is not None:
            self.api_watcher.stop()
        self.reconciler.stop()
        if self.reporter is not None:
            self.reporter.stop()
        self.engine.stop()

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
        self.reporter = Reporter(self.api, s.pod_namespace, s.model_name, s.pod_name, s.pod_uid)
        if s.api_watch:
            name = s.configmap or configmap_name(s.model_name)
            self.api_watcher = ApiWatcher(
                self.api, s.pod_namespace, name, self.reconciler, self.pod
            )

    # ---- reporting ----------------------------------------------------------------

    def report(self, status: Status) -> None:
        if self.reporter is not None:
            self.reporter.submit(self.pod_report(status))

    def pod_report(self, status: Status) -> PodReport:
        return pod_report(status, str(self.device), self._env)


class _StatusSink:
    """Observer forwarding status changes to the reporter."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def swap_finished(self, record: SwapRecord) -> None:
        return None

    def config_rejected(self, failure: Failure) -> None:
        return None

    def status_changed(self, status: Status) -> None:
        self.runtime.report(status)
