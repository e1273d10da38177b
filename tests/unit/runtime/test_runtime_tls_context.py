"""Downloads build their TLS context once per CA setting, not once per file (loading the
CA bundle costs tens of milliseconds of CPU: with a fleet fetching shards from peers it
was the largest share of a hollow node's CPU in bench/distribution.py)."""

from __future__ import annotations

import asyncio

import certifi

from hotswap_runtime.checkpoint.fetch.http import tls_context
from hotswap_runtime.checkpoint.peers.client import client


def test_one_context_per_ca_setting() -> None:
    assert tls_context(None, None) is tls_context(None, None)
    assert tls_context(certifi.where(), None) is not tls_context(None, None)


def test_peer_clients_share_one_context() -> None:
    first, second = client(1.0), client(1.0)
    pools = [c._transport._pool for c in (first, second)]  # type: ignore[attr-defined]
    assert pools[0]._ssl_context is pools[1]._ssl_context
    for made in (first, second):
        asyncio.run(made.aclose())
