"""Drives Canary rollouts between spec changes: pod reports move them, and so does time.

reconcile() plans on create, update and resume. A Canary rollout also moves when pods
report (status changes, which kopf's update handlers ignore) and when a step times
out (nothing changes at all). So `Driver.advance` re-plans a Canary ModelDeployment on
every watch event of it and, while a candidate is out, every `TICK_SECONDS` on a
background thread; it writes only the ConfigMap and the rollout's status fields, and
only what changed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import kopf

from hotswap_operator import resources, rollout, serial
from hotswap_operator.handlers import MD
from hotswap_operator.kube import Kube, KubeError
from hotswap_operator.reconcile import owner_of, pod_infos, utcnow, with_summary
from hotswap_operator.spec import SpecError, parse_spec

log = logging.getLogger(__name__)
TICK_SECONDS = 1.0


@dataclass
class Driver:
    """Re-plans Canary ModelDeployments; remembers which ones have a candidate out."""

    kube: Kube
    active: set[tuple[str, str]] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)

    def advance(self, namespace: str, name: str) -> list[rollout.Event]:
        """Plan once from the live object; write what changed; returns the Events posted."""
        with serial.lock(namespace, name):
            body = self.kube.model_deployment(namespace, name)
            if body is None:
                self.active.discard((namespace, name))
                return []
            try:
                spec = parse_spec(body.get("spec") or {}, name=name)
            except SpecError:
                return []  # reconcile() records why
            if spec.rollout.strategy != "Canary":
                self.active.discard((namespace, name))
                return []
            return self._write(body, spec)

    def _write(self, body: dict[str, Any], spec: Any) -> list[rollout.Event]:
        owner = owner_of(body)
        old = dict(body.get("status") or {})
        if not old.get("stable"):
            return []  # reconcile() writes the first revision
        current = self.kube.model_config(owner.namespace, owner.name, owner)
        infos = pod_infos(self.kube, owner.namespace, owner.name)
        pods = sorted(p.name for p in infos if not p.terminating)
        now = utcnow()
        plan = rollout.plan(owner.name, spec, old, current, now, pods)
        # Status first: no pod reports the candidate before status names it. A crash in
        # between is repaired by the next plan, which finds the ConfigMap behind.
        # The phase and conditions move in the same patch as the rollout state.
        changed = with_summary(old, plan.status, spec.replicas, infos, now)
        if changed:
            self.kube.patch_status(owner.namespace, owner.name, changed)
        if plan.config != current:
            self.kube.apply_owned(resources.config_map(owner, plan.config), owner)
        for event in plan.events:
            self.kube.post_event(body, event, now)
            log.info("%s/%s %s: %s", owner.namespace, owner.name, event.reason, event.message)
        key = (owner.namespace, owner.name)
        (self.active.add if plan.status.get("candidate") else self.active.discard)(key)
        return plan.events

    def run(self) -> None:
        """Tick active rollouts (step timeouts) until stopped."""
        while not self._stop.wait(TICK_SECONDS):
            for namespace, name in sorted(self.active):
                try:
                    self.advance(namespace, name)
                except (KubeError, SpecError) as exc:
                    log.warning("canary tick of %s/%s: %s", namespace, name, exc)

    def stop(self) -> None:
        self._stop.set()


@kopf.on.startup()
def start_driver(memo: kopf.Memo, **_: Any) -> None:
    memo.canary = Driver(Kube.from_env())
    threading.Thread(target=memo.canary.run, name="hotswap-canary", daemon=True).start()


@kopf.on.cleanup()
def stop_driver(memo: kopf.Memo, **_: Any) -> None:
    if getattr(memo, "canary", None) is not None:
        memo.canary.stop()


@kopf.on.event(*MD)
def canary_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Pod reports, pruned pods and spec changes of a Canary ModelDeployment."""
    obj = event["object"]
    meta = obj["metadata"]
    key = (meta["namespace"], meta["name"])
    if event["type"] == "DELETED":
        memo.canary.active.discard(key)
        serial.forget(*key)
        return
    if ((obj.get("spec") or {}).get("rollout") or {}).get("strategy") != "Canary":
        return
    try:
        memo.canary.advance(*key)
    except (KubeError, SpecError) as exc:  # the tick or the next event tries again
        log.warning("canary step of %s/%s: %s", *key, exc)
