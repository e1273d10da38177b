"""Loopback pod IPs: 127.0.0.2, 127.0.0.3, ... one per running pod.

Linux routes all of 127.0.0.0/8 to the loopback device, so each pod can bind its own
address and the ports in its spec keep working side by side. An address is held through
an exclusive lock on a file in the system temp folder, so that test sessions running at
the same time on one machine never hand out the same address; the kernel drops the lock
when the holder dies, so a crash leaks nothing.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
from pathlib import Path

LOCK_DIR = Path(tempfile.gettempdir()) / "hotswap-pod-ips"
_FIRST, _LAST = 2, 254 * 256  # 127.0.0.2 .. 127.0.253.255


def _address(n: int) -> str:
    return f"127.0.{n // 256}.{n % 256}"


class LoopbackIPs:
    """Allocates loopback addresses; never hands out one that is in use."""

    def __init__(self, lock_dir: Path = LOCK_DIR) -> None:
        self._dir = lock_dir
        self._dir.mkdir(parents=True, exist_ok=True)
        self._held: dict[str, int] = {}
        self._mutex = threading.Lock()

    def allocate(self) -> str:
        with self._mutex:
            for n in range(_FIRST, _LAST):
                if n % 256 in (0, 255):
                    continue
                ip = _address(n)
                if ip in self._held:
                    continue
                fd = os.open(self._dir / ip, os.O_CREAT | os.O_RDWR, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self._held[ip] = fd
                return ip
        raise RuntimeError(f"no free loopback pod IP left (locks in {self._dir})")

    def release(self, ip: str) -> None:
        with self._mutex:
            fd = self._held.pop(ip, None)
        if fd is not None:
            os.close(fd)  # closing drops the lock

    def in_use(self) -> set[str]:
        with self._mutex:
            return set(self._held)
