"""Device choice and the CUDA helpers the swapper uses (all no-ops on the CPU)."""

from __future__ import annotations

import ctypes
import functools

import torch

from .weights import StateDict


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


class Staging:
    """Reusable host buffers that checkpoints are parsed into.

    Reusing them keeps a swap from allocating (and the process from growing) swap after
    swap. On CUDA they are page-locked, so copies to the GPU run at full speed on a
    side stream; allocating pinned memory is slow, which is one more reason to keep
    them. A safetensors file's data section is read with one ``readinto`` into one flat
    buffer, and when the next checkpoint has the same layout (the usual case: same
    architecture) the per-tensor views are reused too, so parsing costs one read and a
    handful of Python calls however many tensors the model has. The caller must not
    parse the next checkpoint before the copies reading these buffers have finished
    (the swapper synchronizes its copy stream first).
    """

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self._buffers: StateDict = {}
        self._flat: torch.Tensor | None = None
        self._layout: object = None
        self._views: StateDict = {}

    def buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        buffer = self._buffers.get(name)
        if buffer is None or tuple(buffer.shape) != shape or buffer.dtype != dtype:
            buffer = torch.empty(shape, dtype=dtype, pin_memory=self.pin)
            self._buffers[name] = buffer
        return buffer

    def keep_only(self, names: set[str]) -> None:
        for name in set(self._buffers) - names:
            del self._buffers[name]

    def flat(self, nbytes: int) -> torch.Tensor:
        """A byte buffer of exactly ``nbytes``, reused while the size stays the same."""
        if self._flat is None or self._flat.numel() != nbytes:
            self._flat = None
            self._layout, self._views = None, {}
            self._flat = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin)
        return self._flat

    def views(self, layout: object) -> StateDict | None:
        return self._views if layout == self._layout else None

    def remember(self, layout: object, views: StateDict) -> None:
        self._layout, self._views = layout, views

    def flat_for(self, state: StateDict) -> tuple[torch.Tensor, object] | None:
        """(flat buffer, layout) when ``state`` is the set of views into it."""
        if self._flat is not None and state is self._views:
            return self._flat, self._layout
        return None
