"""Which local command stands in for which container image.

An image matches an entry when its repository (the reference without tag or digest)
equals the entry's key or ends in `/<key>`: `ghcr.io/acme/hotswap-runtime:1.2` matches
`hotswap-runtime`. The container's `args` are appended to the entry's argv; a container
`command` replaces it (as in Kubernetes, where `command` overrides the entrypoint).
"""

from __future__ import annotations

import hashlib
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageCommand:
    """The process that runs for an image, plus environment the image would carry."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


def default_images() -> dict[str, ImageCommand]:
    return {
        "hotswap-runtime": ImageCommand((sys.executable, "-m", "hotswap_runtime")),
        "hotswap-operator": ImageCommand((sys.executable, "-m", "hotswap_operator")),
    }


def repository(image: str) -> str:
    """`registry/name:tag@sha256:...` -> `registry/name`."""
    ref = image.split("@", 1)[0]
    head, _, last = ref.rpartition("/")
    last = last.split(":", 1)[0]
    return f"{head}/{last}" if head else last


def image_id(image: str) -> str:
    """A stable fake image ID for containerStatuses."""
    return "local://sha256:" + hashlib.sha256(image.encode()).hexdigest()


class ImageTable:
    """Image repository suffix -> command. Thread-safe; extend with `register`."""

    def __init__(self, entries: Mapping[str, ImageCommand | Sequence[str]] | None = None) -> None:
        self._entries = default_images()
        self._lock = threading.Lock()
        for key, value in (entries or {}).items():
            self.register(key, value)

    def register(
        self,
        suffix: str,
        command: ImageCommand | Sequence[str],
        env: Mapping[str, str] | None = None,
    ) -> None:
        entry = (
            command
            if isinstance(command, ImageCommand)
            else ImageCommand(tuple(command), dict(env or {}))
        )
        with self._lock:
            self._entries[suffix.strip("/")] = entry

    def resolve(self, image: str) -> ImageCommand | None:
        repo = repository(image)
        with self._lock:
            for key in sorted(self._entries, key=len, reverse=True):
                if repo == key or repo.endswith("/" + key):
                    return self._entries[key]
        return None

    def known(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)
