"""Peer transfer wired from the settings: the fetch side, the peer port and the peer
list's source of one pod. The runtime (service.py) and the dev cluster's hollow pods
(devcluster/hollow.py) build it the same way."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hotswap_contract.wire import peers_configmap_name
from hotswap_runtime.checkpoint.peers.peering import Peering
from hotswap_runtime.checkpoint.peers.roster import ApiPeers, Roster, read_token
from hotswap_runtime.checkpoint.peers.server import PeerLimits, PeerServer
from hotswap_runtime.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class PeerTransfer:
    """Peer transfer's parts: the fetch side, the peer port, the peer list's source
    (its ``api`` is set once the pod has an API client)."""

    peering: Peering
    server: PeerServer
    source: ApiPeers

    @classmethod
    def of(cls, settings: Settings, pod: str) -> PeerTransfer | None:
        """Peer transfer, when the pod has a peer credential and a namespace; else None."""
        s = settings
        if s.peer_token_file is None or not (s.pod_name and s.pod_namespace):
            return None
        try:
            token = read_token(s.peer_token_file)
        except (OSError, ValueError) as exc:
            log.warning("peer transfer is off: %s", exc)
            return None
        source = ApiPeers(s.pod_namespace, s.peers_configmap or peers_configmap_name(s.model_name))
        peering = Peering(
            pod,
            Roster(source),
            token,
            s.peer_port,
            idle_seconds=s.peer_idle_seconds,
            wait_seconds=s.peer_wait_seconds,
        )
        limits = PeerLimits(
            s.peer_max_connections,
            s.peer_max_uploads,
            s.peer_max_bytes_per_second,
            s.peer_idle_seconds,
        )
        server = PeerServer(s.cache_dir, token, s.host, s.peer_port, limits)
        return cls(peering, server, source)
