"""The pod's list of peers: ``peers.json`` of the ``<name>-peers`` ConfigMap.

The operator writes it from the Pod objects (addresses the kubelet set, which no pod can
forge for another); the runtime reads it through the API (a GET at most every
``TTL_SECONDS``, bounded in time) when a fetch starts and while it waits for peers. A
document it cannot read or parse means no peers: the store is read as without them.
Also here: the peer credential, read once from its mounted file.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hotswap_contract.wire import PEERS_KEY, ConfigError, Peers, parse_peers

log = logging.getLogger(__name__)
TTL_SECONDS = 2.0
API_SECONDS = 5.0
MAX_TOKEN_BYTES = 4096


class Roster:
    """The latest ``Peers``, read with ``read`` (the document's text, or None) at most
    every TTL_SECONDS; callable from any thread."""

    def __init__(self, read: Callable[[], str | None], ttl: float = TTL_SECONDS) -> None:
        self.read = read
        self.ttl = ttl
        self._lock = threading.Lock()
        self._at = -1e18
        self._peers: Peers | None = None

    def __call__(self) -> Peers | None:
        with self._lock:
            if time.monotonic() - self._at < self.ttl:
                return self._peers
            self._at = time.monotonic()
            self._peers = self._load()
            return self._peers

    def _load(self) -> Peers | None:
        try:
            text = self.read()
        except Exception as exc:  # the API's own errors: no peers this time
            log.info("peers: cannot read the peer list (%s); reading the store", type(exc).__name__)
            return None
        if text is None:
            return None
        try:
            return parse_peers(text)
        except ConfigError as exc:
            log.warning("peers: %s; reading the store", exc)
            return None


class ApiPeers:
    """Reads ``peers.json`` of ConfigMap ``name`` in ``namespace`` once the runtime has an
    API client (``api`` is set when it connects)."""

    def __init__(self, namespace: str, name: str) -> None:
        self.namespace = namespace
        self.name = name
        self.api: Any = None

    def __call__(self) -> str | None:
        if self.api is None:
            return None
        from kubernetes import client

        found = client.CoreV1Api(self.api).read_namespaced_config_map(
            self.name, self.namespace, _request_timeout=API_SECONDS
        )
        data = found.data or {}
        text = data.get(PEERS_KEY)
        return text if isinstance(text, str) else None


def read_token(path: Path) -> str:
    """The peer credential in ``path`` (at most MAX_TOKEN_BYTES, surrounding blanks
    removed); ValueError when it is empty or too long."""
    with path.open("rb") as file:
        raw = file.read(MAX_TOKEN_BYTES + 1)
    token = raw.decode("ascii", "strict").strip()
    if not token or len(raw) > MAX_TOKEN_BYTES or not token.isprintable():
        raise ValueError(f"{path} does not hold a peer credential")
    return token
