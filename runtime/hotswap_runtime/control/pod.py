"""One pod's control path, wired once: the reconciler, the API watch of model.json and
the pod's report. The runtime (service.py) and the dev cluster's hollow pods both build
it, around a real `Swapper` or a stand-in `SwapTarget`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hotswap_contract.wire import PodReport
from hotswap_runtime.control.desired import Failure, Observer, Reconciler, Status, SwapRecord
from hotswap_runtime.control.journal import LoadJournal
from hotswap_runtime.control.reporter import Reporter, pod_report
from hotswap_runtime.control.target import SwapTarget
from hotswap_runtime.control.watcher import ApiWatcher


@dataclass(frozen=True)
class PodIdentity:
    """Who reports: the pod, where its ModelReplica lives, and what it runs on."""

    pod: str
    namespace: str
    model: str
    uid: str | None
    device: str
    env: dict[str, str]


class PodControl:
    """Reconciler, API watcher and reporter of one pod; it observes its own reconciler
    and sends every status change as the pod's report."""

    def __init__(
        self,
        target: SwapTarget,
        identity: PodIdentity,
        observers: list[Observer],
        journal: LoadJournal | None = None,
    ) -> None:
        self.identity = identity
        self.reconciler = Reconciler(target, [*observers, self], journal=journal)
        self.reporter: Reporter | None = None
        self.api_watcher: ApiWatcher | None = None

    def connect(self, api: Any, configmap: str | None) -> None:
        """Report through ``api``; watch ``configmap`` there too unless it is None."""
        i = self.identity
        self.reporter = Reporter(api, i.namespace, i.model, i.pod, i.uid)
        if configmap is not None:
            self.api_watcher = ApiWatcher(api, i.namespace, configmap, self.reconciler, i.pod)

    def start(self) -> None:
        """Start the worker, the reporter and the watch; report the status at start."""
        self.reconciler.start()
        if self.reporter is not None:
            self.reporter.start()
        if self.api_watcher is not None:
            self.api_watcher.start()
        self.status_changed(self.reconciler.status())

    def stop(self, timeout: float | None = None) -> None:
        """Stop watching, then the worker, then the reporter (each waits ``timeout``,
        else its own default)."""
        if self.api_watcher is not None:
            self.api_watcher.stop()
        self.reconciler.stop(*_given(timeout))
        if self.reporter is not None:
            self.reporter.stop(*_given(timeout))

    def report(self, status: Status) -> PodReport:
        return pod_report(status, self.identity.device, self.identity.env)

    # ---- desired.Observer -----------------------------------------------------------

    def swap_finished(self, record: SwapRecord) -> None:
        return None

    def config_rejected(self, failure: Failure) -> None:
        return None

    def status_changed(self, status: Status) -> None:
        if self.reporter is not None:
            self.reporter.submit(self.report(status))


def _given(timeout: float | None) -> tuple[float, ...]:
    return () if timeout is None else (timeout,)
