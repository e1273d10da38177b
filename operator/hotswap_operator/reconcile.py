"""reconcile() for create, update and resume; aggregate() for pod reports.

Both are idempotent and run outside kopf too (tests call them against a real API
server): they read what they need, compute with the pure modules, and write with
server-side apply or merge patches.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hotswap_operator import resources, rollout, serial, status
from hotswap_operator.admission import admit
from hotswap_operator.config import RuntimeDefaults
from hotswap_operator.kube import Kube
from hotswap_operator.rollout import Event
from hotswap_operator.spec import SpecError, parse_spec


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def owner_of(body: Mapping[str, Any]) -> resources.Owner:
    meta = body["metadata"]
    return resources.Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


def pod_infos(kube: Kube, namespace: str, name: str) -> list[status.PodInfo]:
    """The runtime pods of ModelDeployment `name`, terminating ones included."""
    return [
        status.PodInfo.from_pod(p) for p in kube.pods(namespace, resources.selector_labels(name))
    ]


def live_pod_names(kube: Kube, namespace: str, name: str) -> list[str]:
    """Names of the runtime pods of ModelDeployment `name` that are not terminating."""
    return sorted(p.name for p in pod_infos(kube, namespace, name) if not p.terminating)


def with_summary(
    old: Mapping[str, Any],
    fields: Mapping[str, Any],
    desired: int,
    pods: list[status.PodInfo],
    now: str,
) -> dict[str, Any]:
    """`fields` plus the counts, phase and conditions they imply: one merge patch of
    what changed, so no reader sees a new revision next to the old one's summary."""
    new = {k: v for k, v in {**old, **fields}.items() if v is not None}
    patch = {k: v for k, v in fields.items() if old.get(k) != v}
    patch.update(status.status_patch(new, status.summarize(desired, new, pods), pods, now))
    return patch


def reconcile(kube: Kube, body: Mapping[str, Any], defaults: RuntimeDefaults) -> list[Event]:
    """Make the children match the spec; returns the Events worth posting.

    Plans from the object as the API has it now (the event's `body` may be older than
    a status the Canary driver wrote since), under the object's lock (serial.py).
    Raises SpecError for a spec that cannot work or that the admin's policy refuses,
    ChildConflictError (a SpecError) when a child's name is taken by an object this
    ModelDeployment does not own (both recorded in status first), and KubeError when
    the API refuses a write (the caller retries).
    """
    meta = body["metadata"]
    with serial.lock(meta["namespace"], meta["name"]):
        fresh = kube.model_deployment(meta["namespace"], meta["name"])
        return _reconcile(kube, fresh or body, defaults)


def _reconcile(kube: Kube, body: Mapping[str, Any], defaults: RuntimeDefaults) -> list[Event]:
    owner = owner_of(body)
    old = dict(body.get("status") or {})
    generation = int(body["metadata"].get("generation") or 0)
    desired = int((body.get("spec") or {}).get("replicas", 1))
    infos = pod_infos(kube, owner.namespace, owner.name)
    now = utcnow()
    try:
        spec = parse_spec(body.get("spec") or {}, name=owner.name)
        admit(spec, defaults, owner.name)
        current = kube.model_config(owner.namespace, owner.name, owner)
        pods = sorted(p.name for p in infos if not p.terminating)
        plan = rollout.plan(owner.name, spec, old, current, now, pods)
        manifests = resources.children(owner, spec, defaults, plan.config)
        uids = kube.claim(manifests, owner)  # before any write: all or nothing
    except SpecError as exc:  # record it, so phase and conditions say why
        failed = {"error": str(exc), "observedGeneration": generation}
        kube.patch_status(
            owner.namespace, owner.name, with_summary(old, failed, desired, infos, now)
        )
        raise
    for manifest, uid in zip(manifests, uids, strict=True):
        kube.apply(manifest, uid)
    fields = {
        **plan.status,
        "error": None,
        "observedGeneration": generation,
        "selector": ",".join(f"{k}={v}" for k, v in resources.selector_labels(owner.name).items()),
    }
    patch = with_summary(old, fields, desired, infos, now)
    if patch:
        kube.patch_status(owner.namespace, owner.name, patch)
    return [*plan.events, *status.transition_events(old, patch)]


@dataclass
class Aggregator:
    """Folds pod reports into status, one ModelDeployment at a time.

    Remembers each deployment's last seen pod reports (in memory) to post one Event
    per swap; after a restart the first look only sets that baseline.
    """

    kube: Kube
    memory: dict[tuple[str, str], status.PodMemory] = field(default_factory=dict)
    _locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def _lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def forget(self, namespace: str, name: str) -> None:
        with self._guard:
            self.memory.pop((namespace, name), None)
            self._locks.pop((namespace, name), None)

    def aggregate(self, namespace: str, name: str) -> dict[str, Any]:
        """Read the CR and its pods, patch what changed; returns the patch ({} if none)."""
        key = (namespace, name)
        with self._lock(key):
            body = self.kube.model_deployment(namespace, name)
            if body is None:
                self.forget(namespace, name)
                return {}
            old = body.get("status") or {}
            pods = [
                status.PodInfo.from_pod(p)
                for p in self.kube.pods(namespace, resources.selector_labels(name))
            ]
            desired = int((body.get("spec") or {}).get("replicas", 1))
            summary = status.summarize(desired, old, pods)
            now = utcnow()
            patch = status.status_patch(old, summary, pods, now)
            events, self.memory[key] = status.pod_events(self.memory.get(key), old.get("pods"))
            events += status.transition_events(old, patch)
            if patch:
                self.kube.patch_status(namespace, name, patch)
            for event in events:
                self.kube.post_event(body, event, now)
            return patch
