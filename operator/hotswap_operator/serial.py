"""One lock per ModelDeployment, so reconcile() and the Canary driver never plan at once.

Both read the object fresh inside the lock: a plan made from a stale status could
otherwise undo a step the other has just written (a ConfigMap naming fewer pods).
"""

from __future__ import annotations

import threading

_locks: dict[tuple[str, str], threading.RLock] = {}
_guard = threading.Lock()


def lock(namespace: str, name: str) -> threading.RLock:
    """The lock of ModelDeployment `namespace/name` (created on first use)."""
    with _guard:
        return _locks.setdefault((namespace, name), threading.RLock())


def forget(namespace: str, name: str) -> None:
    with _guard:
        _locks.pop((namespace, name), None)
