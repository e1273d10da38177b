"""The NaN/infinity screen of new weights, cheap enough to run while a download arrives.

A float is NaN or infinite exactly when its exponent bits are all ones, so the screen
reads the weights as unsigned integers: with the sign bit cleared, a value is finite
when it is below the bit pattern of infinity. One ``max`` per block of an integer view
answers for the whole block, in numpy, on the calling thread only: the loader never
starts an OpenMP team of its own next to the serving threads' (on a busy CPU the two
teams' spinning barriers starve each other), and numpy lets go of the GIL while it
scans. Blocks of ``BLOCK_BYTES`` bound the scratch memory. Dtypes without such a
pattern (float8, complex) fall back to ``torch.isfinite``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

BLOCK_BYTES = 4 << 20
# dtype -> (unsigned view, mask without the sign bit, bits of +infinity)
_PATTERNS: dict[torch.dtype, tuple[torch.dtype, np.dtype, int, int]] = {
    torch.float16: (torch.int16, np.dtype(np.uint16), 0x7FFF, 0x7C00),
    torch.bfloat16: (torch.int16, np.dtype(np.uint16), 0x7FFF, 0x7F80),
    torch.float32: (torch.int32, np.dtype(np.uint32), 0x7FFF_FFFF, 0x7F80_0000),
    torch.float64: (torch.int64, np.dtype(np.uint64), 0x7FFF_FFFF_FFFF_FFFF, 0x7FF0 << 48),
}


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether a tensor holds no NaN and no infinity (True for integer tensors)."""
    if not (tensor.is_floating_point() or tensor.is_complex()) or not tensor.numel():
        return True
    pattern = _PATTERNS.get(tensor.dtype)
    if pattern is None or tensor.device.type != "cpu" or not tensor.is_contiguous():
        return bool(torch.isfinite(tensor).all())
    signed, unsigned, mask, infinity = pattern
    bits = tensor.reshape(-1).view(signed).numpy().view(unsigned)
    step = max(1, BLOCK_BYTES // unsigned.itemsize)
    scratch = np.empty(min(step, bits.size), dtype=unsigned)
    for start in range(0, bits.size, step):
        block = bits[start : start + step]
        masked = np.bitwise_and(block, unsigned.type(mask), out=scratch[: block.size])
        if masked.max() >= infinity:
            return False
    return True


def non_finite(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of the tensors that hold NaN or infinity."""
    return [name for name, tensor in state.items() if not all_finite(tensor)]
