"""The controller: triggers in, one sync at a time per ModelDeployment out.

kopf's watches call the `on_*` methods (on the event loop); each asks for a sync of the
ModelDeployment concerned, which waits in the work queue (deduplicated) until a worker
runs `Syncer.sync` in a thread. A worker reads the pods from kopf's index of runtime
pods and their reports from kopf's index of ModelReplica objects (both filled by their
watches before any handler runs: no LIST per event). Only the leader
syncs: the other replicas keep their caches and take every key when they become
leader. After a sync the controller remembers what it wrote (so the watch event of its
own write is not a new trigger), requeues at the next step deadline, and retries
failures with a per-key backoff. Every `resync` seconds the leader syncs every
ModelDeployment again from the caches (spread over half the period), so a trigger lost
anywhere on its way (a watch event the API server never sent) is late, not lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hotswap_contract.wire import peers_configmap_name
from hotswap_operator import pod_problems, resources
from hotswap_operator.context import Applied, PodInfo
from hotswap_operator.errors import PermanentError, SyncError
from hotswap_operator.kube import ConflictError, KubeError
from hotswap_operator.metrics import Metrics
from hotswap_operator.object_metrics import object_state
from hotswap_operator.reasons import Reason
from hotswap_operator.sync import Syncer, SyncResult
from hotswap_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)
Key = tuple[str, str]  # (namespace, name) of a ModelDeployment
PodSource = Callable[[Key], Iterable[PodInfo]]
Report = tuple[str, dict[str, Any]]  # (pod name, its ModelReplica's status as stored)
ReportSource = Callable[[Key], Mapping[str, Any]]  # pod name -> report
OUTCOMES = {
    Reason.ROLLOUT_COMPLETE: "Complete",
    Reason.ROLLED_BACK: "RolledBack",
    Reason.ROLLOUT_HALTED: "Halted",
    Reason.SWAP_FAILED: "Stalled",
    Reason.NO_POD_SERVING: "Stalled",
}


def owner_key(obj: Mapping[str, Any]) -> Key | None:
    """The ModelDeployment a runtime pod or child belongs to (by its label)."""
    meta = obj.get("metadata") or {}
    name = (meta.get("labels") or {}).get(resources.LABEL_DEPLOYMENT)
    return (meta["namespace"], name) if name else None


class Controller:
    def __init__(
        self,
        syncer: Syncer,
        metrics: Metrics,
        workers: int = 4,
        report_batch: float = 0.0,
        resync: float = 0.0,
    ) -> None:
        self.syncer = syncer
        self.metrics = metrics
        self.workers = workers
        # Pod and report changes sync a ModelDeployment at most once per `report_batch`
        # seconds (the EndpointSlice controller's batch period): the first at once, the
        # rest of a burst together. 1000 pods reporting a swap are a few dozen syncs and
        # status writes, not a thousand, each reading every report.
        self.report_batch = report_batch
        self.resync = resync  # seconds between syncs of every key (0: never)
        self._last_started: dict[Key, float] = {}  # loop time of each key's last sync
        self.queue: WorkQueue[Key] = WorkQueue()
        self.metrics.watch_queue(lambda: len(self.queue))
        self.pods: PodSource = lambda key: ()
        self.reports: ReportSource = lambda key: {}
        self.leading = False
        self.known: set[Key] = set()  # every ModelDeployment seen (for a takeover)
        self.applied: dict[Key, Applied] = {}  # children applied, per (uid, generation)
        self.written: dict[Key, str] = {}  # resourceVersion of its last status write
        self.written_config: dict[Key, str] = {}  # ... and of its last ConfigMap write
        self.creating: dict[Key, str] = {}  # why its Deployment cannot create pods
        self._tasks: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Future[SyncResult]] = set()  # syncs in their threads

    # ---- triggers (kopf handlers, on the event loop) ---------------------------------

    def on_model_deployment(self, kind: str | None, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if kind == "DELETED":
            self.known.discard(key)
            self._forget(key, str(meta.get("uid")))
            return
        self.known.add(key)
        if meta.get("resourceVersion") != self.written.get(key):  # not only its own write
            self.trigger(key)

    def on_pod(self, kind: str | None, body: Mapping[str, Any]) -> None:
        """A runtime pod, or its report (ModelReplica), changed: batched."""
        key = owner_key(body)
        if key is None or not self.leading:
            return
        last = self._last_started.get(key)
        if last is None or self.report_batch <= 0:
            self.queue.add(key)
            return
        due = last + self.report_batch - asyncio.get_running_loop().time()
        self.queue.add_after(key, due)

    def on_child(self, kind: str | None, body: Mapping[str, Any]) -> None:
        """A ConfigMap or Deployment the operator created changed or went away."""
        key = owner_key(body)
        if key is None:
            return
        meta = body["metadata"]
        if body.get("kind") == "ConfigMap" and meta.get("name") == peers_configmap_name(key[1]):
            version = None if kind == "DELETED" else meta.get("resourceVersion")
            if self.syncer.peers_changed(key, version):  # not its own write: restored
                self.trigger(key)
            return
        if body.get("kind") == "Deployment" and self._creation_changed(kind, key, body):
            self.trigger(key)  # pods cannot be created, or now can: status says so
            return
        if kind == "DELETED":
            self.applied.pop(key, None)  # put every child back
            self.trigger(key)
        elif body.get("kind") == "ConfigMap" and body["metadata"].get(
            "resourceVersion"
        ) != self.written_config.get(key):
            self.trigger(key)  # edited by someone else: the sync restores it

    def _creation_changed(self, kind: str | None, key: Key, body: Mapping[str, Any]) -> bool:
        """Remember why the Deployment cannot create pods; True when that changed (a
        deleted Deployment counts as changed: the sync puts it back)."""
        problem = "" if kind == "DELETED" else pod_problems.creation(body)
        before = self.creating.pop(key, "")
        if problem:
            self.creating[key] = problem
        return problem != before and kind != "DELETED"

    def trigger(self, key: Key) -> None:
        if self.leading:
            self.queue.add(key)

    # ---- leadership (leader.LeaderElector's callbacks) -------------------------------

    def start_leading(self) -> None:
        """Sync every ModelDeployment once: children applied again, memory rebuilt."""
        self.leading = True
        self.metrics.leader.set(1)
        self.applied.clear()
        self.syncer.memory.clear()
        for key in sorted(self.known):
            self.queue.add(key)

    def stop_leading(self) -> None:
        self.leading = False
        self.metrics.leader.set(0)
        self.metrics.objects.clear()
        self.queue.clear()

    # ---- workers -----------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name=f"hotswap-sync-{i}") for i in range(self.workers)
        ]
        if self.resync > 0:
            self._tasks.append(asyncio.create_task(self._resync(), name="hotswap-resync"))

    async def _resync(self) -> None:
        """Every `resync` seconds, queue every known ModelDeployment, spread over half
        the period so a hundred of them are not a burst of API reads."""
        while True:
            await asyncio.sleep(self.resync)
            if not self.leading:
                continue
            keys = sorted(self.known)
            for i, key in enumerate(keys):
                self.queue.add_after(key, self.resync / 2 * i / len(keys))

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the workers; wait (up to `timeout`) for syncs already in their threads,
        so none writes after this replica gave the Lease up."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._running:
            await asyncio.wait(self._running, timeout=timeout)

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                if self.leading:
                    await self.process(key)
            except Exception:  # a worker never dies: log, back off, go on
                log.exception("sync of %s/%s", *key)
                self.metrics.sync_errors.labels("Unexpected").inc()
                self.queue.retry(key)
            finally:
                self.queue.done(key)

    async def process(self, key: Key) -> SyncResult | None:
        """One sync of `key` in a worker thread; what follows from its outcome."""
        pods = tuple(self.pods(key))  # read on the loop, where kopf updates the indexes
        reports = dict(self.reports(key))
        applied = self.applied.get(key)
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        self._last_started[key] = loop.time()
        creating = self.creating.get(key, "")
        running = loop.run_in_executor(
            None, self.syncer.sync, *key, pods, applied, reports, creating
        )
        self._running.add(running)
        running.add_done_callback(self._running.discard)
        try:
            result = await asyncio.shield(running)
        except SyncError as exc:
            self._failed(key, exc)
            return None
        finally:
            self.metrics.sync_seconds.observe(time.monotonic() - started)
            self._observe(key)
        self._succeeded(key, result)
        return result

    def _observe(self, key: Key) -> None:
        """The per-object series, from the status this sync decided (written or not)."""
        status = self.syncer.decided.get(key)
        if status is not None:
            self.metrics.objects.set(key, object_state(status))

    def _failed(self, key: Key, exc: SyncError) -> None:
        """Count the failure and sync again when `exc` says (errors.py)."""
        self.metrics.sync_errors.labels(exc.reason).inc()
        if isinstance(exc, KubeError) and not isinstance(exc, ConflictError):
            log.warning("sync of %s/%s: %s", *key, exc)  # not in status, not routine
        if isinstance(exc, PermanentError):
            return
        if exc.delay is None:
            self.queue.retry(key)
        else:
            self.queue.add_after(key, exc.delay)

    def _succeeded(self, key: Key, result: SyncResult) -> None:
        self.queue.forget(key)
        if result.gone:
            self._forget(key, None)
            return
        if result.applied is not None:
            self.applied[key] = result.applied
        if result.resource_version is not None:
            self.written[key] = result.resource_version
        if result.config_version is not None:
            self.written_config[key] = result.config_version
        if result.requeue_after is not None:
            self.queue.add_after(key, result.requeue_after)
        for event in result.events:
            if event.reason in OUTCOMES:
                self.metrics.rollouts.labels(OUTCOMES[event.reason]).inc()

    def _forget(self, key: Key, uid: str | None) -> None:
        self.queue.drop(key)
        self.metrics.objects.drop(key)
        self._last_started.pop(key, None)
        self.applied.pop(key, None)
        self.written.pop(key, None)
        self.written_config.pop(key, None)
        self.syncer.forget(*key)
        if uid:
            self.syncer.recorder.forget(uid)
