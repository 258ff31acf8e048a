"""Top-k over the last dimension: `torch.topk`, or on CPU its fused numba kernel.

`torch.topk` on CPU costs ~15 us per row of 1024 floats (a general nth_element + sort); the
product-key search runs it on tokens x 2H rows, where it is the largest single cost of a
lookup (docs/performance.md). When the kernel back-end allows it (`extmem.memory.kernels`:
numba installed, CPU fp32 input, `EXTMEM_KERNELS`), inputs of >= MIN_ROWS rows use the insertion
top-k of `kernels.topk`: 2.5-3.5x faster than torch.topk here at n = 1,024.
Values are then gathered from the input with `torch.gather`, so gradients are unchanged.
Ties: both return one of the tied positions; which one may differ. NaN scores are not
expected (torch.topk ranks NaN first; the kernel's result is then unspecified, but its
indices stay in range).
"""

from __future__ import annotations

import torch

from extmem.memory.kernels import backend
from extmem.memory.kernels.topk import topk_indices

MIN_ROWS = 256  # below this, dispatch overhead beats the gain: use torch.topk


def topk(x: torch.Tensor, k: int, fused: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the k largest along the last dim, sorted descending, like torch.topk.
    `fused=False` always takes torch.topk."""
    rows = x.numel() // max(x.shape[-1], 1)
    if not fused or not backend.fused_available(x) or rows < MIN_ROWS or k > x.shape[-1]:
        return x.topk(k, dim=-1)
    idx = topk_indices(x.detach().reshape(-1, x.shape[-1]), k)  # (R, k)
    idx = idx.view(*x.shape[:-1], k)
    return x.gather(-1, idx), idx
