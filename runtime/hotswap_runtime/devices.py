"""Device choice and the CUDA helpers the swapper uses (all no-ops on the CPU): free
memory, cache release (device and pinned host), host heap trim, and the copies of new
weights into a model (on CUDA on a side stream)."""

from __future__ import annotations

import ctypes
import functools
import platform
from collections.abc import Mapping

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when a GPU is visible; ``cuda`` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("hotswap-runtime: HOTSWAP_DEVICE=cuda but torch sees no CUDA device")
    return torch.device(name)


def is_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def free_bytes(device: torch.device) -> int | None:
    """Free memory on a CUDA device (None on the CPU, where the OS decides)."""
    if not is_cuda(device):
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free) + int(torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def release_cached(device: torch.device) -> None:
    """Hand freed CUDA blocks back to the driver."""
    if is_cuda(device):
        torch.cuda.empty_cache()


def release_pinned() -> None:
    """Hand cached page-locked host blocks back (the pinned staging buffers' allocator
    keeps freed blocks otherwise)."""
    if torch.cuda.is_available() and hasattr(torch._C, "_host_emptyCache"):
        torch._C._host_emptyCache()


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def release_host_memory() -> None:
    """Hand free heap pages back to the OS (glibc's ``malloc_trim``; no-op elsewhere).

    A swap's transient allocations (header, probe activations, request buffers on other
    threads) leave free pages inside glibc's arenas that ``free`` keeps; trimming after
    each swap keeps the process from growing swap after swap."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def gpu_memory(device: torch.device) -> dict[str, int]:
    if not is_cuda(device):
        return {}
    return {
        "allocated": int(torch.cuda.memory_allocated(device)),
        "reserved": int(torch.cuda.memory_reserved(device)),
    }


def copy_flat(dst: torch.Tensor, src: torch.Tensor, stream: torch.cuda.Stream | None) -> None:
    """One bulk copy of ``src`` into ``dst`` (on CUDA on ``stream``, waited for)."""
    with torch.no_grad():
        if stream is None:
            dst.copy_(src)
            return
        stream.wait_stream(torch.cuda.current_stream(dst.device))
        with torch.cuda.stream(stream):
            dst.copy_(src, non_blocking=True)
        stream.synchronize()


def copy_tensors(
    targets: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    stream: torch.cuda.Stream | None,
) -> None:
    """Copy ``state`` into a model's tensors: one foreach call (on CUDA on ``stream``
    from pinned buffers), so the GIL is taken a handful of times, not per tensor.
    Names, shapes and dtypes were checked before; the copy never casts."""
    names = list(targets)
    dst = [targets[name] for name in names]
    src = [state[name] for name in names]
    with torch.no_grad():
        if stream is None:
            torch._foreach_copy_(dst, src)
            return
        stream.wait_stream(torch.cuda.current_stream(dst[0].device if dst else None))
        with torch.cuda.stream(stream):
            torch._foreach_copy_(dst, src, non_blocking=True)
        stream.synchronize()


def runtime_env() -> dict[str, str]:
    """Versions reported in the pod's ModelReplica (``status.env``)."""
    env = {"python": platform.python_version(), "torch": torch.__version__}
    if torch.version.cuda:
        env["cuda"] = str(torch.version.cuda)
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env
