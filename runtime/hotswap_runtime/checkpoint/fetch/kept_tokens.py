"""Bearer tokens kept between downloads (``gcp_metadata``, ``azure_identity``): each
until ``REFRESH_SECONDS`` before it expires, at most ``size`` of them, the one kept
longest ago dropped first. A token whose lifetime is unknown or shorter is not kept."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

REFRESH_SECONDS = 300.0  # a kept token is used until this long before it expires
K = TypeVar("K", bound=Hashable)


class KeptTokens(Generic[K]):
    def __init__(self, size: int) -> None:
        self.size = size
        self._kept: OrderedDict[K, tuple[float, str]] = OrderedDict()  # -> (good until, token)

    def get(self, key: K) -> str | None:
        """The token kept for ``key``, while it is still good."""
        kept = self._kept.get(key)
        return kept[1] if kept is not None and kept[0] > time.monotonic() else None

    def keep(self, key: K, token: str, lifetime: float) -> None:
        """Keep ``token``, good for ``lifetime`` seconds from now, for ``key``."""
        if lifetime > REFRESH_SECONDS:
            self._kept[key] = (time.monotonic() + lifetime - REFRESH_SECONDS, token)
            self._kept.move_to_end(key)
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
