"""Leader election with a coordination.k8s.io/v1 Lease: one replica syncs, the others
keep their caches warm and take over when the leader's Lease runs out.

As client-go's leaderelection: every `retry` seconds each replica reads the Lease; the
holder renews it (an update with the resourceVersion read, so two replicas never both
win), the others take it once its record has not changed for `lease` seconds by their
own clock (no trust in another machine's clock). A leader that cannot renew within
`renew_deadline` (< `lease`) stops leading before anyone else may start. A leader
that shuts down cleanly releases the Lease, so the next one starts within `retry`.
Handover after a hard kill takes at most lease + 2 x retry seconds (8 + 2 = 10 s with
the defaults).

A replica that cannot see (`blind` says why: its watches have failed too long,
watchhealth.py) does not lead: a leader stops and releases the Lease, so a replica
that sees takes it within a retry period, and none takes it while blind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hotswap_operator.kube import ConflictError, Kube, KubeError, Permission

log = logging.getLogger(__name__)
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
# In the operator's own namespace only (a Role, not the ClusterRole; the chart checks).
PERMISSIONS: set[Permission] = {
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
}


@dataclass(frozen=True)
class Timing:
    lease: float = 8.0  # a Lease unrenewed this long (by the reader's clock) is free
    renew_deadline: float = 5.0  # the leader steps down after failing to renew this long
    retry: float = 1.0  # every replica tries this often


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Holds (or waits for) Lease `namespace/name` as `identity`; calls `started` when
    it becomes leader and `stopped` when it stops (both on the event loop)."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        started: Callable[[], None],
        stopped: Callable[[], None],
        timing: Timing = Timing(),
        clock: Callable[[], float] = time.monotonic,
        blind: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.kube = kube
        self.path = f"{LEASES.format(namespace=namespace)}/{name}"
        self.namespace, self.name, self.identity = namespace, name, identity
        self.started, self.stopped = started, stopped
        self.timing = timing
        self.clock = clock
        self.blind = blind
        self.blind_reason: str | None = None  # why this replica does not lead now
        self.leading = False
        self._renewed = 0.0  # when this replica last renewed (its clock)
        self._observed: tuple[Any, ...] | None = None  # the Lease record last seen
        self._observed_at = 0.0  # when it last changed (this replica's clock)

    async def run(self) -> None:
        """Try to acquire or renew every `retry` seconds, until cancelled."""
        while True:
            await self.step()
            await asyncio.sleep(self.timing.retry)

    async def step(self) -> None:
        if await self._stands_aside():
            return
        try:
            held = await asyncio.to_thread(self.try_acquire_or_renew)
        except KubeError as exc:
            log.warning("Lease %s/%s: %s", self.namespace, self.name, exc)
            held = False
        now = self.clock()
        if held:
            self._renewed = now
            if not self.leading:
                self.leading = True
                log.info("%s is the leader (Lease %s/%s)", self.identity, self.namespace, self.name)
                self.started()
        elif self.leading and (now - self._renewed > self.timing.renew_deadline or held is None):
            self._stop()

    async def _stands_aside(self) -> bool:
        """True while this replica is blind: a leader stops and gives the Lease up."""
        reason = self.blind()
        if reason is None:
            if self.blind_reason is not None:
                log.info("%s sees again; it may lead", self.identity)
            self.blind_reason = None
            return False
        if self.blind_reason is None:
            log.warning("%s does not lead: %s", self.identity, reason)
        self.blind_reason = reason
        if self.leading:
            self._stop()
            await asyncio.to_thread(self._give_back)
        return True

    def _stop(self) -> None:
        self.leading = False
        log.warning("%s stopped leading (Lease %s/%s)", self.identity, self.namespace, self.name)
        self.stopped()

    def try_acquire_or_renew(self) -> bool | None:
        """True: this replica holds the Lease now. False: not (yet). None: another
        replica holds it (a leader that sees this must stop at once)."""
        lease = self.kube.request("GET", self.path)
        now = _micro_now()
        if lease is None:
            return self._create(now)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        expired = self.clock() - self._observed_at > float(
            spec.get("leaseDurationSeconds") or self.timing.lease
        )
        if holder and holder != self.identity and not expired:
            return None if self.leading else False
        transitions = int(spec.get("leaseTransitions") or 0)
        new_spec = {
            **spec,
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.timing.lease),
            "renewTime": now,
        }
        if holder != self.identity:
            new_spec.update(acquireTime=now, leaseTransitions=transitions + 1)
        body = {**lease, "spec": new_spec}
        try:
            updated = self.kube.request("PUT", self.path, body)
        except ConflictError:
            return False  # someone else wrote it first
        if updated is not None:
            new = updated["spec"]
            self._observed = (new["holderIdentity"], new["renewTime"], new.get("leaseTransitions"))
            self._observed_at = self.clock()
        return updated is not None

    def _create(self, now: str) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.timing.lease),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        try:
            created = self.kube.request("POST", LEASES.format(namespace=self.namespace), body)
        except ConflictError:
            return False  # created by another replica just now
        return created is not None

    def release(self) -> None:
        """Give the Lease up (clean shutdown), so another replica takes it at once."""
        if not self.leading:
            return
        self.leading = False
        self._give_back()

    def _give_back(self) -> None:
        """Empty the Lease's holder if it is still this replica."""
        try:
            lease = self.kube.request("GET", self.path)
            spec = (lease or {}).get("spec") or {}
            if lease is None or spec.get("holderIdentity") != self.identity:
                return
            released = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1}
            self.kube.request("PUT", self.path, {**lease, "spec": released})
            log.info("%s released the Lease %s/%s", self.identity, self.namespace, self.name)
        except KubeError as exc:
            log.warning("releasing Lease %s/%s: %s", self.namespace, self.name, exc)
