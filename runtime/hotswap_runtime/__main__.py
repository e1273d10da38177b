"""``hotswap-runtime`` / ``python -m hotswap_runtime``: serve one model with uvicorn."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType

import torch
import uvicorn

from hotswap_runtime.server import create_app
from hotswap_runtime.service import Runtime
from hotswap_runtime.serving.head import HeadLimits, bounded_protocol
from hotswap_runtime.serving.listen import bind_sockets, listen_hosts
from hotswap_runtime.settings import load_settings

# Libraries that log request headers or signing material at DEBUG: never below INFO, so
# credentials from the Secret folder cannot reach the log whatever the runtime's level.
_CHATTY = (
    "botocore",
    "aiobotocore",
    "s3fs",
    "fsspec",
    "urllib3",
    "kubernetes",
    "aiohttp",
    "httpx",
    "httpcore",
)


def quiet_libraries() -> None:
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    for name in _CHATTY:
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.INFO))


def fixed_mmap_threshold(threshold: int = 32 << 20) -> None:
    """Serve allocations of ``threshold`` bytes and more from mmap (returned to the OS
    when freed) and smaller ones from the heap, which keeps at most ``8 x threshold``
    free at its top for reuse (M_TRIM_THRESHOLD; the rest goes back to the OS).

    glibc's default raises the threshold after freeing a large mmapped block, up to
    32 MiB; a fixed one keeps the bound the same for the life of the process. Below it,
    a forward pass's activations reuse freed heap memory instead of fresh, zero-filled
    mmaps (resnet18 at batch 8 on the CPU runs about 1.7x as fast as with 1 MiB). Host
    memory stays bounded: live activations by HOTSWAP_FORWARD_MEMORY_BYTES, requests by
    HOTSWAP_REQUEST_MEMORY_BYTES, weights by the three model copies (serving, standby,
    staging), whose buffers are reused swap after swap, and the heap is trimmed after
    every swap (docs/architecture.md, "Serving interface"). No-op where libc has no
    mallopt.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_threshold, m_trim_threshold = -3, -1
    libc.mallopt(m_mmap_threshold, threshold)
    if threshold > 1 << 20:  # at 1 MiB and below, glibc's 128 KiB trim threshold stays
        libc.mallopt(m_trim_threshold, 8 * threshold)


def few_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (default 8 per core) unless $MALLOC_ARENA_MAX is set.

    Every thread that serves a request or loads a swap may get an arena of its own, and
    free pages spread over many arenas keep the process growing swap after swap; two
    are enough for a few serving threads. No-op where libc has no mallopt.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_arena_max = -8
    libc.mallopt(m_arena_max, arenas)


class DrainingServer(uvicorn.Server):
    """uvicorn that drains on SIGTERM: `on_drain` (readiness turns false) at once, the
    listener keeps serving new and in-flight requests for `drain_seconds` while
    endpoints and kube-proxy stop sending traffic here, then the usual graceful
    shutdown. A second signal, or SIGINT, shuts down at once."""

    def __init__(
        self, config: uvicorn.Config, drain_seconds: float, on_drain: Callable[[], None]
    ) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self.on_drain = on_drain
        self._drain: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self.drain_seconds <= 0 or self._drain is not None:
            super().handle_exit(sig, frame)
            return
        self.on_drain()
        self._drain = threading.Timer(self.drain_seconds, super().handle_exit, (sig, frame))
        self._drain.daemon = True
        self._drain.start()


def main(argv: Sequence[str] | None = None) -> None:
    settings = load_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    quiet_libraries()
    fixed_mmap_threshold(settings.mmap_threshold_bytes)
    few_malloc_arenas()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    sockets = bind_sockets(listen_hosts(settings.host, settings.loopback), settings.port)
    app = create_app(Runtime(settings))
    log = logging.getLogger("hotswap_runtime")

    def drain() -> None:
        app.state.runtime.dataplane.draining = True
        log.info("SIGTERM: not ready; serving for %.1fs more, then exiting", settings.drain_seconds)

    heads = HeadLimits(settings.head_bytes, settings.head_seconds, settings.max_connections)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        http=bounded_protocol(heads),
        timeout_keep_alive=settings.keep_alive_seconds,
        limit_concurrency=settings.max_connections,
    )
    DrainingServer(config, settings.drain_seconds, drain).run(sockets=sockets)


if __name__ == "__main__":
    main()
