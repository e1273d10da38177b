"""When a failed sync is tried again, carried by the exception that failed it (kopf's
`TemporaryError(delay=...)` and `PermanentError`); the controller reads it from there.

* `SyncError`: may work later: after `delay` seconds, or after the key's backoff
  (workqueue.py: 0.05 s doubling to 30 s) when `delay` is None;
* `PermanentError`: cannot work until the object changes (that change, or the resync,
  syncs it again): never retried.

`reason` is the exception's label of `hotswap_operator_sync_errors_total`.
"""

from __future__ import annotations

from typing import ClassVar


class SyncError(Exception):
    """A sync failed; it may work later."""

    reason: ClassVar[str] = "Unexpected"
    delay: ClassVar[float | None] = None  # seconds until the next try; None: the backoff


class PermanentError(SyncError):
    """A sync failed and cannot work until the object changes: never retried."""
