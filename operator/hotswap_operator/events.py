"""Kubernetes Events on a ModelDeployment: best effort, repeats aggregated.

An Event says what happened; it is never what makes a sync succeed. A refused or
failed post (422 from an admission policy, 403, a timeout) is logged and counted
(`hotswap_operator_events_total{result="failed"}`) and the sync goes on. The same Event
(object, type, reason, message) posted again within `REPEAT_SECONDS` is not a new
object: the one posted before gets `count + 1` and a new `lastTimestamp`, as kubelet's
event recorder does.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hotswap_contract.wire import API_GROUP, API_VERSION, KIND
from hotswap_operator.kube import Kube, KubeError
from hotswap_operator.reasons import Event

log = logging.getLogger(__name__)
REPEAT_SECONDS = 600.0
REMEMBERED = 4096  # Events kept for aggregation (oldest forgotten first)
MESSAGE_LIMIT = 1024


@dataclass
class _Posted:
    name: str
    count: int
    at: float  # monotonic time of the last post


class EventRecorder:
    """Posts Events through `kube`; `outcome(result)` is called with "created",
    "aggregated" or "failed" for each (the metrics hook)."""

    def __init__(
        self,
        kube: Kube,
        component: str,
        outcome: Callable[[str], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.component = component
        self.instance = os.environ.get("POD_NAME", component)
        self.outcome = outcome
        self.clock = clock
        self._posted: OrderedDict[tuple[str, str, str, str], _Posted] = OrderedDict()
        self._lock = threading.Lock()  # sync workers post from several threads

    def record(self, body: Mapping[str, Any], event: Event, now: str) -> bool:
        """Post `event` on the object `body`; True if the API took it. Never raises."""
        meta = body["metadata"]
        key = (str(meta.get("uid")), event.type.value, event.reason.value, event.message)
        try:
            result = self._post(meta, key, event, now)
        except KubeError as exc:
            where = f"{meta['namespace']}/{meta['name']}"
            log.warning("Event %s on %s not posted: %s", event.reason.value, where, exc)
            self.outcome("failed")
            return False
        self.outcome(result)
        return True

    def forget(self, uid: str) -> None:
        """Drop what is remembered of the Events of object `uid` (it is gone)."""
        with self._lock:
            for key in [k for k in self._posted if k[0] == uid]:
                del self._posted[key]

    def _post(
        self, meta: Mapping[str, Any], key: tuple[str, str, str, str], event: Event, now: str
    ) -> str:
        namespace = meta["namespace"]
        with self._lock:
            before = self._posted.get(key)
        if before is not None and self.clock() - before.at < REPEAT_SECONDS:
            repeat = {"count": before.count + 1, "lastTimestamp": now}
            if self.kube.patch_event(namespace, before.name, repeat) is not None:
                self._remember(key, _Posted(before.name, before.count + 1, self.clock()))
                return "aggregated"
        created = self.kube.create_event(namespace, self._new(meta, event, now))
        self._remember(key, _Posted(created["metadata"]["name"], 1, self.clock()))
        return "created"

    def _remember(self, key: tuple[str, str, str, str], posted: _Posted) -> None:
        with self._lock:
            self._posted[key] = posted
            self._posted.move_to_end(key)
            while len(self._posted) > REMEMBERED:
                self._posted.popitem(last=False)

    def _new(self, meta: Mapping[str, Any], event: Event, now: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": event.type.value,
            "reason": event.reason.value,
            "message": event.message[:MESSAGE_LIMIT],
            "source": {"component": self.component},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": self.component,
            "reportingInstance": self.instance,
        }
