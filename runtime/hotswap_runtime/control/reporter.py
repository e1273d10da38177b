"""Reports this pod's state in its own ``ModelReplica`` object.

Each runtime pod owns one small object, named after the pod, labelled with its
ModelDeployment and owned by the pod (the garbage collector removes it with the pod).
The report is its ``status``; a JSON merge patch replaces it, and the first report (a
404) creates the object. Pods never write the same object, so they never conflict, and
no write grows with the number of pods: the ModelDeployment carries only what the
operator aggregates. Reports go out from a background thread: the latest report
replaces any that has not been sent yet, one equal to the last written is not sent
again, and failures are retried with exponential back-off, so serving never waits on
the API server.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Any

from hotswap_contract.wire import (
    API_GROUP,
    API_VERSION,
    DEPLOYMENT_LABEL,
    REPLICA_KIND,
    REPLICA_PLURAL,
    PodReport,
    PodState,
)
from hotswap_runtime.control.desired import Failure, Status

log = logging.getLogger(__name__)


class Reporter:
    """Coalescing, retrying status writer for one pod."""

    def __init__(
        self,
        api: Any,
        namespace: str,
        name: str,
        pod: str,
        pod_uid: str | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name  # the ModelDeployment
        self.pod = pod
        self.pod_uid = pod_uid
        self.max_backoff = max_backoff
        self._cond = threading.Condition()
        self._pending: PodReport | None = None
        self._stopping = False
        self._sent_phases: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="hotswap-reporter", daemon=True)
        self._last_sent: PodReport | None = None  # the reporter thread's alone
        self.sent = 0
        self.unchanged = 0  # reports not sent: equal to the last one written
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
        return {"status": entry}

    def manifest(self, report: PodReport) -> dict[str, Any]:
        """The whole object, for the first report: named after the pod, owned by it."""
        meta: dict[str, Any] = {
            "name": self.pod,
            "namespace": self.namespace,
            "labels": {DEPLOYMENT_LABEL: self.name},
        }
        if self.pod_uid:
            meta["ownerReferences"] = [
                {"apiVersion": "v1", "kind": "Pod", "name": self.pod, "uid": self.pod_uid}
            ]
        return {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": REPLICA_KIND,
            "metadata": meta,
            "status": report.to_status(),
        }

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
            if report == self._last_sent:  # e.g. "loading" when the load really starts
                self.unchanged += 1
                continue
            throttled = self._send(api, report)
            if throttled is None:
                backoff = 0.5
                continue
            # Throttled (429, API Priority and Fairness): when the server says, spread
            # over a second so a thousand pods do not come back at once. Else back off.
            delay = throttled + random.uniform(0, 1) if throttled > 0 else backoff
            with self._cond:
                if self._pending is None:
                    self._pending = report
                if self._cond.wait_for(lambda: self._stopping, delay):
                    return
            if throttled <= 0:
                backoff = min(backoff * 2, self.max_backoff)

    def _write(self, api: Any, report: PodReport) -> None:
        """Merge-patch the report; create the object when it does not exist yet."""
        from kubernetes.client.exceptions import ApiException

        try:
            api.patch_namespaced_custom_object(
                API_GROUP,
                API_VERSION,
                self.namespace,
                REPLICA_PLURAL,
                self.pod,
                self.body(report),
                _content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            api.create_namespaced_custom_object(
                API_GROUP, API_VERSION, self.namespace, REPLICA_PLURAL, self.manifest(report)
            )

    def _send(self, api: Any, report: PodReport) -> float | None:
        """None when written; else the seconds the server asked to wait (429
        Retry-After), or 0 for any other failure."""
        try:
            self._write(api, report)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            log.warning(
                "report of pod %s (ModelReplica %s/%s) failed (will retry): %s",
                self.pod,
                self.namespace,
                self.pod,
                self.last_error,
            )
            return retry_after(exc)
        self._sent_phases = set(report.swap_seconds)
        self._last_sent = report
        self.sent += 1
        self.last_error = None
        return None


MAX_RETRY_AFTER = 10.0  # seconds; a larger Retry-After is not believed


def retry_after(exc: BaseException) -> float:
    """Seconds a 429 answer asks the client to wait (1 without a header); 0 otherwise."""
    if getattr(exc, "status", None) != 429:
        return 0.0
    headers = getattr(exc, "headers", None) or {}
    try:
        seconds = float(headers.get("Retry-After", 1))
    except (TypeError, ValueError):
        seconds = 1.0
    return min(max(seconds, 0.1), MAX_RETRY_AFTER)


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
        analysis=status.analysis,
        fetched=status.fetched,
    )


def _config_failure(failure: Failure | None) -> bool:
    return failure is not None and failure.revision is None


def _message(status: Status, failure: Failure | None) -> str:
    if failure is not None:
        return failure.reason
    if status.state == PodState.LOADING and status.target is not None:
        return _judging(status.target.revision, status) or (
            f"loading revision {status.target.revision}"
        )
    if status.serving is not None:
        return f"serving revision {status.serving.revision.revision}"
    return "waiting for model.json"


def _judging(revision: int, status: Status) -> str | None:
    """Where a shadow comparison of ``revision`` stands, while it runs."""
    shadow = status.analysis.shadow if status.analysis is not None else None
    if shadow is None or shadow.revision != revision:
        return None
    if shadow.decision not in ("Running", "Waiting"):
        return None
    head = "waiting for traffic to judge" if shadow.decision == "Waiting" else "judging"
    return (
        f"{head} revision {revision} on live requests: {shadow.disagreements} of "
        f"{shadow.samples} samples disagree ({shadow.skipped} skipped, {shadow.seconds:.0f}s)"
    )
