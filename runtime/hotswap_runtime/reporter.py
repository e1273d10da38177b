"""Reports this pod's state to ``status.pods.<pod>`` of its ModelDeployment.

A JSON merge patch on the status subresource touches only this pod's key, so pods never
conflict. Reports go out from a background thread: the latest report replaces any that
has not been sent yet, and failures are retried with exponential back-off, so serving
never waits on the API server.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .contract import API_GROUP, API_VERSION, PLURAL, PodReport, PodState
from .desired import Failure, Status

log = logging.getLogger(__name__)


class Reporter:
    """Coalescing, retrying status writer for one pod."""

    def __init__(
        self,
        api: Any,
        namespace: str,
        name: str,
        pod: str,
        max_backoff: float = 30.0,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.pod = pod
        self.max_backoff = max_backoff
        self._cond = threading.Condition()
        self._pending: PodReport | None = None
        self._stopping = False
        self._sent_phases: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="hotswap-reporter", daemon=True)
        self.sent = 0
        self.last_error: str | None = None

    def submit(self, report: PodReport) -> None:
        with self._cond:
            self._pending = report
            self._cond.notify_all()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def body(self, report: PodReport) -> dict[str, Any]:
        """The merge patch: nulls remove fields (and swap phases) the report no longer has."""
        entry = report.model_dump(mode="json", by_alias=True)
        phases: dict[str, Any] = {k: None for k in self._sent_phases - set(report.swap_seconds)}
        phases.update(entry["swapSeconds"])
        entry["swapSeconds"] = phases
        return {"status": {"pods": {self.pod: entry}}}

    def _run(self) -> None:
        from kubernetes import client

        api = client.CustomObjectsApi(self.api)
        backoff = 0.5
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or self._pending is not None)
                if self._stopping:
                    return
                report, self._pending = self._pending, None
            assert report is not None
            if self._send(api, report):
                backoff = 0.5
                continue
            with self._cond:
                if self._pending is None:
                    self._pending = report
                if self._cond.wait_for(lambda: self._stopping, backoff):
                    return
            backoff = min(backoff * 2, self.max_backoff)

    def _send(self, api: Any, report: PodReport) -> bool:
        try:
            api.patch_namespaced_custom_object_status(
                API_GROUP,
                API_VERSION,
                self.namespace,
                PLURAL,
                self.name,
                self.body(report),
                _content_type="application/merge-patch+json",
            )
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            log.warning(
                "status report for pod %s on %s/%s failed (will retry): %s",
                self.pod,
                self.namespace,
                self.name,
                self.last_error,
            )
            return False
        self._sent_phases = set(report.swap_seconds)
        self.sent += 1
        self.last_error = None
        return True


def pod_report(status: Status, device: str, env: dict[str, str]) -> PodReport:
    """What this pod reports for a reconciler status snapshot."""
    serving = status.serving
    target = status.target
    swap = status.last_swap
    failure = status.last_failure
    failed = status.state == PodState.FAILED
    return PodReport(
        revision=serving.revision.revision if serving else None,
        sha256=serving.revision.checkpoint.sha256 if serving else None,
        state=status.state,
        targetRevision=target.revision if target else None,
        targetSha256=target.checkpoint.sha256 if target else None,
        loadedAt=serving.loaded_at if serving else None,
        swapSeconds=dict(swap.phases) if swap else {},
        device=device,
        env=env,
        message=_message(status, failure if failed or _config_failure(failure) else None),
        configGeneration=status.config_generation,
    )


def _config_failure(failure: Failure | None) -> bool:
    return failure is not None and failure.revision is None


def _message(status: Status, failure: Failure | None) -> str:
    if failure is not None:
        return failure.reason
    if status.state == PodState.LOADING and status.target is not None:
        return f"loading revision {status.target.revision}"
    if status.serving is not None:
        return f"serving revision {status.serving.revision.revision}"
    return "waiting for model.json"
