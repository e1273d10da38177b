"""peers.json: which runtime pods of a ModelDeployment may exchange checkpoint files.

The list comes from the Pod objects the operator watches (the kubelet's `status.podIP`),
never from what pods report about themselves: a pod cannot put another address in it.
Oldest first, so the first `originConcurrency` pods (the origins, which read the store)
stay the same while pods come and go. Pure: the sync writes what `wanted` returns.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import ValidationError

from hotswap_contract.wire import MAX_PEERS, Peer, Peers
from hotswap_operator.context import PodInfo


def listed(pods: Iterable[PodInfo]) -> tuple[Peer, ...]:
    """Pods that can serve peers: an address, not being deleted, not finished; oldest
    first (creationTimestamp, then name), at most MAX_PEERS."""
    alive = [p for p in pods if p.ip and not p.terminating and not p.finished]
    out: list[Peer] = []
    for pod in sorted(alive, key=lambda p: (p.created, p.name)):
        try:
            out.append(Peer(name=pod.name, ip=pod.ip))
        except ValidationError:  # not a pod name or an address: never listed
            continue
    return tuple(out[:MAX_PEERS])


def wanted(
    name: str, pods: Iterable[PodInfo], origin_concurrency: int, current: Peers | None
) -> Peers | None:
    """The peers.json to write, its generation one above ``current``'s; None when
    ``current`` already says the same (so a pod event that changes nothing writes
    nothing)."""
    peers = listed(pods)
    if (
        current is not None
        and current.name == name
        and current.origin_concurrency == origin_concurrency
        and current.peers == peers
    ):
        return None
    generation = current.generation + 1 if current is not None else 1
    return Peers(
        name=name, generation=generation, originConcurrency=origin_concurrency, peers=peers
    )
