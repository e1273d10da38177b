"""Downloads build their TLS context once per CA setting, not once per file (loading the
CA bundle costs tens of milliseconds of CPU: with a fleet fetching shards it was the
largest share of a hollow node's CPU in bench/distribution.py; peers, which speak plain
HTTP, build none)."""

from __future__ import annotations

import certifi

from hotswap_runtime.checkpoint.fetch.http import tls_context


def test_one_context_per_ca_setting() -> None:
    assert tls_context(None, None) is tls_context(None, None)
    assert tls_context(certifi.where(), None) is not tls_context(None, None)
