"""A checkpoint store for the remote-fetch tests: its cache in `cache_dir`, credentials
from the Secret folders under `secrets`, no file roots, and downloads allowed to reach
`networks` (loopback, where the tests' servers listen) with the idle bound `idle`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hotswap_runtime.checkpoint.store import CheckpointStore


def remote_store(
    cache_dir: Path,
    secrets: Path,
    idle: float,
    networks: Sequence[str] = ("127.0.0.1/32",),
) -> CheckpointStore:
    return CheckpointStore(
        cache_dir,
        10**9,
        10**8,
        secrets,
        file_roots=(),
        allowed_networks=tuple(networks),
        idle_seconds=idle,
    )
