"""The one sync path of a ModelDeployment (argo-rollouts' syncHandler).

Every trigger (the object, its pods, its ConfigMap, a pod report, a step deadline)
asks the controller for a sync of that object; `Syncer.sync` is that sync:

1. read the object and its ConfigMap (one GET each); the pods come from the cache;
2. `decide` (pure): parse and admit the spec, plan with the strategy's planner,
   aggregate the pods' reports, and compute the one status merge patch;
3. write: children (when this generation's are not applied yet: all or nothing, never
   taking over another's object), then status once, with the resourceVersion read in 1
   as precondition (a stale read never overwrites newer state: 409 -> the controller
   syncs again), then `model.json`, then the runtime Deployment;
4. post the Events the step is worth (best effort) and say when to sync again (a
   Canary step's deadline).

Level-triggered: the plan compares the spec with what status and the ConfigMap say,
never with the previous spec, so no change is lost whatever failed before it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hotswap_contract.wire import ModelConfig, Peers
from hotswap_operator import analysis, canary, peers, resources, rollout, summary
from hotswap_operator.admission import admit
from hotswap_operator.config import RuntimeDefaults
from hotswap_operator.context import Applied, PodInfo, SyncContext
from hotswap_operator.events import EventRecorder
from hotswap_operator.kube import ChildConflictError, ConflictError, Kube, KubeError
from hotswap_operator.reasons import Event
from hotswap_operator.resources import Manifest
from hotswap_operator.spec import DeploymentSpec, SpecError, parse_spec
from hotswap_operator.status import ModelDeploymentStatus, merge_patch
from hotswap_operator.summary import PodMemory
from hotswap_operator.windows import Windows

log = logging.getLogger(__name__)
DEADLINE_SLACK = 1.0  # sync this long after a step deadline (the timeout is "> limit")


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Decision:
    """What one sync writes, decided from a SyncContext alone."""

    status: ModelDeploymentStatus  # the status the object should have
    patch: dict[str, Any]  # the merge patch taking the stored status there ({}: none)
    config: ModelConfig | None  # model.json to write (None: the current one is right)
    children: list[Manifest]  # every child, ConfigMap included (empty: not due)
    events: list[Event]  # plan and phase-change Events (pod Events: Syncer.memory)
    requeue_after: float | None  # seconds until the next deadline (a Canary step)
    error: SpecError | ChildConflictError | None = None  # why it cannot run (in status)
    retired: list[Manifest] = field(default_factory=list)  # children to delete if ours
    peers: Peers | None = None  # peers.json to write (None: unchanged, or peers off)


def decide(ctx: SyncContext) -> Decision:
    """Plan, aggregate and diff: the writes a sync makes (pure)."""
    try:
        spec = parse_spec(ctx.raw_spec, name=ctx.owner.name)
        admit(spec, ctx.defaults, ctx.owner.name)
        plan = rollout.plan(ctx, spec)
        children, retired = (
            (
                resources.children(ctx.owner, spec, ctx.defaults, plan.config),
                resources.retired(ctx.owner, spec, ctx.defaults),
            )
            if ctx.children_due
            else ([], [])
        )
    except SpecError as exc:
        return refuse(ctx, exc)
    selector = ",".join(f"{k}={v}" for k, v in resources.selector_labels(ctx.owner.name).items())
    planned = plan.status.model_copy(
        update={
            "error": None,
            "observed_generation": ctx.generation,
            "selector": selector,
            "url": resources.service_url(ctx.owner),
        }
    )
    required = summary.minimum_serving(resources.budget(spec, ctx.defaults), spec.replicas)
    new = _summarized(ctx, planned, spec.replicas, required, spec.progress_deadline_seconds)
    deadline = canary.step_deadline(new, spec)
    progress = summary.progress_due(new, spec.progress_deadline_seconds, ctx.now)
    return Decision(
        status=new,
        patch=merge_patch(ctx.raw_status, new),
        config=plan.config if plan.config != ctx.config or ctx.children_due else None,
        children=children,
        events=[*plan.events, *summary.transition_events(ctx.status, new)],
        requeue_after=_soonest(
            None if deadline is None else _seconds_until(deadline, ctx.now), progress
        ),
        retired=retired,
        peers=_peers(ctx, spec),
    )


def _peers(ctx: SyncContext, spec: DeploymentSpec) -> Peers | None:
    """peers.json from the pods (peers.py), when the spec turns peer transfer on."""
    if not spec.distribution.peers:
        return None
    origins = spec.distribution.origin_concurrency or ctx.defaults.distribution.origin_concurrency
    return peers.wanted(ctx.owner.name, ctx.pods, origins, ctx.peers)


def refuse(ctx: SyncContext, exc: SpecError | ChildConflictError) -> Decision:
    """The status saying why the spec cannot run (phase Failed); nothing else written."""
    failed = ctx.status.model_copy(
        update={"error": str(exc), "observed_generation": ctx.generation}
    )
    new = _summarized(ctx, failed, ctx.desired_replicas)
    return Decision(
        status=new,
        patch=merge_patch(ctx.raw_status, new),
        config=None,
        children=[],
        events=summary.transition_events(ctx.status, new),
        requeue_after=None,
        error=exc,
    )


def _summarized(
    ctx: SyncContext,
    status: ModelDeploymentStatus,
    desired: int,
    required: int = 1,
    progress_deadline: int | None = None,
) -> ModelDeploymentStatus:
    result = summary.summarize(desired, status, ctx.pods, required, ctx.creating)
    judged = summary.apply(status, result, ctx.now, ctx.generation, progress_deadline)
    return judged.model_copy(update={"analysis": analysis.summarize(judged)})


def _soonest(*delays: float | None) -> float | None:
    due = [d for d in delays if d is not None]
    return min(due) if due else None


def _seconds_until(deadline: datetime, now: str) -> float:
    left = (deadline - datetime.fromisoformat(now)).total_seconds()
    return max(left, 0.0) + DEADLINE_SLACK


@dataclass(frozen=True)
class SyncResult:
    """What the controller needs to know after a sync."""

    gone: bool = False  # the object no longer exists (or is being deleted)
    applied: Applied | None = None  # (uid, generation) whose children are now applied
    resource_version: str | None = None  # the object's version after the status write
    config_version: str | None = None  # the ConfigMap's version after a write
    requeue_after: float | None = None
    events: list[Event] = field(default_factory=list)  # the Events posted
    decision: Decision | None = None


class Syncer:
    """Reads, decides and writes one ModelDeployment at a time (the controller never
    runs two syncs of one object at once). Remembers each object's last seen pod
    reports (to post one Event per swap); a new leader's first sync only sets that."""

    def __init__(
        self,
        kube: Kube,
        defaults: RuntimeDefaults,
        recorder: EventRecorder,
        clock: Callable[[], str] = utcnow,
        windows: Windows | None = None,
    ) -> None:
        self.kube = kube
        self.defaults = defaults
        self.recorder = recorder
        self.clock = clock
        self.memory: dict[tuple[str, str], PodMemory] = {}
        self.windows = windows or Windows()  # Canary bake windows' start readings
        # ConfigMap `<name>-peers` as last read or written (read once, then remembered:
        # a sync reads no more than before); dropped when someone else changes it
        self.peers: dict[tuple[str, str], Mapping[str, Any] | None] = {}
        # the status each object's last sync decided, a refused spec's (phase Failed)
        # included: the per-object metrics read it (object_metrics.py)
        self.decided: dict[tuple[str, str], ModelDeploymentStatus] = {}

    def forget(self, namespace: str, name: str) -> None:
        self.memory.pop((namespace, name), None)
        self.decided.pop((namespace, name), None)
        self.windows.forget((namespace, name))
        self.peers.pop((namespace, name), None)

    def peers_changed(self, key: tuple[str, str], version: str | None) -> bool:
        """A watch event of ConfigMap `<name>-peers` (``version``: its resourceVersion,
        None when deleted): True, and the remembered copy dropped, unless it is this
        operator's own last write."""
        held = self.peers.get(key)
        if (
            version is not None
            and (held or {}).get("metadata", {}).get("resourceVersion") == version
        ):
            return False
        self.peers.pop(key, None)
        return True

    def sync(
        self,
        namespace: str,
        name: str,
        pods: Sequence[PodInfo],
        applied: Applied | None = None,
        reports: Mapping[str, Any] | None = None,
        creating: str = "",
    ) -> SyncResult:
        """One sync. Raises ConflictError when the object changed since it was read (sync
        again), SpecError when the spec cannot run and ChildConflictError when a child's
        name is taken (both recorded in status), KubeError when the API refuses a write."""
        body = self.kube.model_deployment(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.forget(namespace, name)
            return SyncResult(gone=True)
        config_map = self.kube.config_map(namespace, name)
        key = (namespace, name)
        if key not in self.peers:
            self.peers[key] = self.kube.peers_config_map(namespace, name)
        ctx = SyncContext.build(
            body,
            config_map,
            pods,
            self.defaults,
            self.clock(),
            applied,
            reports or {},
            self.peers[key],
            creating,
        )
        window = self.windows.measure((namespace, name), ctx)  # a bake window that ended
        ctx = dataclasses.replace(ctx, window=window) if window is not None else ctx
        decision = decide(ctx)
        self.decided[key] = decision.status
        if decision.error is not None:
            self._refuse(ctx, decision)
            raise decision.error
        result = self._persist(ctx, decision)
        self.windows.begin((namespace, name), decision.status, pods)  # one that began
        return result

    def _refuse(self, ctx: SyncContext, decision: Decision) -> None:
        """Status says why the spec cannot run; nothing else is written."""
        self._write_status(ctx, decision)
        self._post_events(ctx, decision)

    def _persist(self, ctx: SyncContext, decision: Decision) -> SyncResult:
        config = (
            resources.config_map(ctx.owner, decision.config)
            if decision.config is not None
            else None
        )
        listing = (
            resources.peers_config_map(ctx.owner, decision.peers)
            if decision.peers is not None
            else None
        )
        uids = self._claim(ctx, decision, config, listing)
        first = [m for m in decision.children if m["kind"] not in ("ConfigMap", "Deployment")]
        for manifest in first:  # the pods' access, before anything that starts pods
            self._write_child(ctx, manifest, uids.get(_ref(manifest)))
        version = self._write_status(ctx, decision)
        config_version = None
        if config is not None:  # after status: no pod serves what status lacks
            applied = self.kube.apply(config, uids[_ref(config)])
            config_version = str(applied["metadata"]["resourceVersion"])
        for manifest in decision.children:
            if manifest["kind"] == "Deployment":  # last: its pods find their ConfigMap
                self.kube.apply(manifest, uids[_ref(manifest)])
        if listing is not None:  # who to fetch from, once the pods exist
            self._write_peers(ctx, listing, uids[_ref(listing)])
        for manifest in decision.retired:  # e.g. a PodDisruptionBudget turned off
            self.kube.retire(manifest, ctx.owner)
        events = self._post_events(ctx, decision)
        return SyncResult(
            applied=(ctx.owner.uid, ctx.generation) if decision.children else None,
            resource_version=version,
            config_version=config_version,
            requeue_after=decision.requeue_after,
            events=events,
            decision=decision,
        )

    def _write_child(self, ctx: SyncContext, manifest: Manifest, uid: str | None) -> None:
        """Apply ``manifest``; the peer token's Secret is created (a random token) and
        never written again: a pod that started with it keeps serving its peers. The
        operator may not read Secrets, so the create is how it learns the Secret is
        there (409: created before, the name holds this ModelDeployment's uid)."""
        if manifest["kind"] != "Secret":
            self.kube.apply(manifest, uid)
            return
        with contextlib.suppress(ConflictError):
            self.kube.create(resources.peer_secret(ctx.owner, secrets.token_urlsafe(32)))

    def _write_peers(self, ctx: SyncContext, listing: Manifest, uid: str | None) -> None:
        key = (ctx.owner.namespace, ctx.owner.name)
        try:
            self.peers[key] = self.kube.apply(listing, uid)
        except KubeError:  # read it again next time
            self.peers.pop(key, None)
            raise

    def _claim(
        self,
        ctx: SyncContext,
        decision: Decision,
        config: Manifest | None,
        listing: Manifest | None = None,
    ) -> dict[tuple[str, str], str | None]:
        """Uids of the children about to be written (None: absent). Before any write,
        all or nothing: a name held by another object is refused in status
        (ChildConflictError). The ConfigMaps read by this sync need no second look."""
        claiming = [m for m in decision.children if m["kind"] != "Secret"]  # created
        if not claiming and config is not None and ctx.config_uid is None:
            claiming = [config]  # absent, or not ours: look before writing
        if listing is not None and ctx.peers_uid is None:
            claiming.append(listing)  # peers.json: absent, or not ours
        uids: dict[tuple[str, str], str | None] = {}
        if config is not None and ctx.config_uid is not None:
            uids[_ref(config)] = ctx.config_uid
        if listing is not None and ctx.peers_uid is not None:
            uids[_ref(listing)] = ctx.peers_uid
        if not claiming:
            return uids
        try:
            found = self.kube.claim(claiming, ctx.owner)
        except ChildConflictError as exc:
            self._refuse(ctx, refuse(ctx, exc))
            raise
        uids.update({_ref(m): uid for m, uid in zip(claiming, found, strict=True)})
        return uids

    def _write_status(self, ctx: SyncContext, decision: Decision) -> str | None:
        if not decision.patch:
            return None
        written = self.kube.patch_status(
            ctx.owner.namespace, ctx.owner.name, decision.patch, ctx.resource_version
        )
        return str(written["metadata"]["resourceVersion"])

    def _post_events(self, ctx: SyncContext, decision: Decision) -> list[Event]:
        key = (ctx.owner.namespace, ctx.owner.name)
        reports = ctx.status.reports()  # of existing pods only (SyncContext.build)
        pod_events, self.memory[key] = summary.pod_events(self.memory.get(key), reports)
        posted = [*decision.events, *pod_events]
        for event in posted:
            self.recorder.record(ctx.body, event, ctx.now)
            log.info("%s/%s %s: %s", *key, event.reason.value, event.message)
        return posted


def _ref(manifest: Manifest) -> tuple[str, str]:
    return (manifest["kind"], manifest["metadata"]["name"])
