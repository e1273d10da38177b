"""Device choice and the CUDA helpers the swapper uses (all no-ops on the CPU)."""

from __future__ import annotations

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


def gpu_memory(device: torch.device) -> dict[str, int]:
    if not is_cuda(device):
        return {}
    return {
        "allocated": int(torch.cuda.memory_allocated(device)),
        "reserved": int(torch.cuda.memory_reserved(device)),
    }


class PinnedStaging:
    """Reusable page-locked host buffers, one per state-dict entry, for fast H2D copies.

    Allocating pinned memory is slow, so buffers survive between swaps and are reused
    whenever the next checkpoint has the same names, shapes and dtypes. The caller must
    not refill them before the copies that read them have finished (the swapper
    synchronizes its copy stream before returning).
    """

    def __init__(self) -> None:
        self._buffers: StateDict = {}

    def stage(self, state: StateDict) -> StateDict:
        staged: StateDict = {}
        for name, tensor in state.items():
            buffer = self._buffers.get(name)
            if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
                buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
                self._buffers[name] = buffer
            buffer.copy_(tensor)
            staged[name] = buffer
        for name in set(self._buffers) - set(state):
            del self._buffers[name]
        return staged
