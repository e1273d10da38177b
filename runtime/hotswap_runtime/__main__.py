"""``hotswap-runtime`` / ``python -m hotswap_runtime``: serve one model with uvicorn."""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence

import torch
import uvicorn

from .server import create_app
from .service import Runtime
from .settings import load_settings

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


def fixed_mmap_threshold(threshold: int = 1 << 20) -> None:
    """Serve tensors of ``threshold`` bytes and more from mmap and return them to the OS
    when freed.

    glibc raises its mmap threshold after freeing a large mmapped block, so the next
    checkpoint's tensors land on the heap and the process keeps growing swap after swap.
    A fixed threshold turns that off. The price is paid by forward passes on CPU: every
    activation over the threshold is a fresh mmap, zero-filled page by page (resnet18 at
    batch 8 runs about twice as slow with 1 MiB); ``HOTSWAP_MMAP_THRESHOLD_BYTES`` raises
    it, and the heap then keeps up to eight times that much free memory for reuse.
    No-op where libc has no mallopt.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_threshold, m_trim_threshold = -3, -1
    libc.mallopt(m_mmap_threshold, threshold)
    if threshold > 1 << 20:
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
    app = create_app(Runtime(settings))
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
    )


if __name__ == "__main__":
    main()
