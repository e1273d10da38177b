"""Everything one sync of a ModelDeployment looks at, read once at its start.

As argo-rollouts' rolloutContext (rollout/context.go): the sync reads the object and its
ConfigMap from the API and the pods and their reports from the controller's cache, builds one
`SyncContext`, and from then on decides from it alone (sync.decide is pure). Nothing
here talks to the API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hotswap_contract.wire import (
    CONFIG_KEY,
    PEERS_KEY,
    ConfigError,
    ModelConfig,
    Peers,
    parse_config,
    parse_peers,
)
from hotswap_operator import pod_problems, resources
from hotswap_operator.commands import Commands, read_commands
from hotswap_operator.config import RuntimeDefaults
from hotswap_operator.resources import Owner
from hotswap_operator.status import ModelDeploymentStatus
from hotswap_operator.traffic import Window

Applied = tuple[str, int]  # (uid, generation) whose children this process applied


@dataclass(frozen=True)
class PodInfo:
    """What the operator keeps of one runtime pod (from its watch of pods)."""

    name: str
    ready: bool
    terminating: bool = False
    ip: str = ""  # status.podIP: where a bake window reads its /metrics (scrape.py)
    created: str = ""  # metadata.creationTimestamp (RFC 3339): peers.json lists oldest first
    finished: bool = False  # phase Succeeded or Failed: its containers will not run again
    problem: str = ""  # what keeps it from running, in the kubelet's words (pod_problems.py)

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> PodInfo:
        status = pod.get("status") or {}
        conditions = status.get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        meta = pod.get("metadata") or {}
        return cls(
            meta["name"],
            ready,
            bool(meta.get("deletionTimestamp")),
            str(status.get("podIP") or ""),
            str(meta.get("creationTimestamp") or ""),
            status.get("phase") in ("Succeeded", "Failed"),
            pod_problems.problem(pod),
        )


@dataclass(frozen=True)
class SyncContext:
    # -- the ModelDeployment as read (GET, once) -------------------------------------
    owner: Owner  # name, namespace and uid: the children's owner reference
    body: Mapping[str, Any]  # the object itself (Events name it as involvedObject)
    resource_version: str  # the status write's precondition: nothing newer is overwritten
    generation: int  # metadata.generation: what observedGeneration will say
    raw_spec: Mapping[str, Any]  # spec as stored (parsed by decide: a SpecError is status)
    raw_status: Mapping[str, Any]  # status as stored: the merge patch is computed against it
    status: ModelDeploymentStatus  # the same status, typed, with the live pods' reports
    # (`pods`: their ModelReplica objects, from the controller's cache; never written)
    # -- what the pods are told: ConfigMap `<name>-model` as read (GET, once) ------------
    config: ModelConfig | None  # its model.json; None when absent, unreadable or not ours
    config_uid: str | None  # its uid when this ModelDeployment controls it (apply precondition)
    config_holder: str | None  # who holds it when not this ModelDeployment (never taken over)
    # -- the runtime pods, from the controller's watch cache (no LIST) ------------------
    pods: tuple[PodInfo, ...]  # terminating ones included (they do not count as live)
    # -- this operator ------------------------------------------------------------------
    defaults: RuntimeDefaults  # the chart's runtime defaults and the admin's policy
    now: str  # this sync's clock (RFC 3339, seconds)
    children_due: bool  # apply every child: this generation's children not applied yet
    # -- who the pods fetch from: ConfigMap `<name>-peers` as last read or written ------
    peers: Peers | None = None  # its peers.json when this ModelDeployment controls it
    peers_uid: str | None = None  # its uid then (apply precondition); None: absent or not ours
    # -- what the sync measured: the Canary bake window that just ended (scrape.py) -----
    window: Window | None = None  # None: no window ended (or none began on this replica)
    # -- the runtime Deployment, from the controller's watch -----------------------------
    creating: str = ""  # why it cannot create pods (FailedCreate), or ""

    @property
    def commands(self) -> Commands:
        """promote / abort / retry, from the object's annotations (commands.py)."""
        return read_commands(self.body.get("metadata") or {})

    @property
    def live_pods(self) -> list[str]:
        return sorted(p.name for p in self.pods if not p.terminating)

    @property
    def desired_replicas(self) -> int:
        try:
            return int(self.raw_spec.get("replicas", 1))
        except (TypeError, ValueError):
            return 1

    @classmethod
    def build(
        cls,
        body: Mapping[str, Any],
        config_map: Mapping[str, Any] | None,
        pods: Sequence[PodInfo],
        defaults: RuntimeDefaults,
        now: str,
        applied: Applied | None,
        reports: Mapping[str, Any] | None = None,
        peers_map: Mapping[str, Any] | None = None,
        creating: str = "",
    ) -> SyncContext:
        meta = body["metadata"]
        owner = Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])
        generation = int(meta.get("generation") or 0)
        raw_status = dict(body.get("status") or {})
        config, uid, holder = _read_config(config_map, owner)
        peers, peers_uid = _read_peers(peers_map, owner)
        names = {p.name for p in pods}  # a gone pod's report waits for the GC: ignored
        own = {pod: r for pod, r in (reports or {}).items() if pod in names}
        status = ModelDeploymentStatus.from_raw(raw_status).model_copy(update={"pods": own})
        return cls(
            owner=owner,
            body=body,
            resource_version=str(meta["resourceVersion"]),
            generation=generation,
            raw_spec=dict(body.get("spec") or {}),
            raw_status=raw_status,
            status=status,
            config=config,
            config_uid=uid,
            config_holder=holder,
            pods=tuple(pods),
            creating=creating,
            defaults=defaults,
            now=now,
            children_due=applied != (owner.uid, generation),
            peers=peers,
            peers_uid=peers_uid,
        )


def _read_config(
    cm: Mapping[str, Any] | None, owner: Owner
) -> tuple[ModelConfig | None, str | None, str | None]:
    if cm is None:
        return None, None, None
    who = resources.holder(cm, owner)
    if who is not None:
        return None, None, who
    uid = str(cm["metadata"]["uid"])
    text = (cm.get("data") or {}).get(CONFIG_KEY)
    if not text:
        return None, uid, None
    try:
        return parse_config(text), uid, None
    except ConfigError:
        return None, uid, None  # rewritten from the spec with a higher generation


def _read_peers(cm: Mapping[str, Any] | None, owner: Owner) -> tuple[Peers | None, str | None]:
    """(peers.json, uid) of ConfigMap `<name>-peers` when ``owner`` controls it; a
    document that does not parse is written again (generation 1)."""
    if cm is None or resources.holder(cm, owner) is not None:
        return None, None
    uid = str(cm["metadata"]["uid"])
    try:
        return parse_peers((cm.get("data") or {}).get(PEERS_KEY) or ""), uid
    except ConfigError:
        return None, uid
