"""Which path runs `LazyAdam`'s row update: the numba kernel or the torch path of `sparse_optim`.

`LazyAdam.step` in plain torch gathers the touched rows of the value, m and v into buffers,
runs five elementwise passes over them and scatters them back: with a step that touches
hundreds of thousands of rows (a 1M-slot PKM reading 4,096 tokens x 4 heads x 32 slots touches
~40 % of the table) each pass streams hundreds of MB through memory. The kernel
(`extmem.memory.kernels.lazy_adam`) updates each touched row in place in one pass; same
formulas and float32 arithmetic, so results agree to rounding (tested against the torch path
and the lazy-Adam reference). Used for contiguous 2-D tables when the kernel back-end allows it
(`extmem.memory.kernels`: CPU float32, numba, `EXTMEM_KERNELS`).
"""

from __future__ import annotations

import torch

from extmem.memory.kernels import backend
from extmem.memory.kernels.lazy_adam import lazy_adam_rows

__all__ = ["available", "lazy_adam_rows"]


def available(param: torch.Tensor) -> bool:
    return backend.fused_available(param) and param.is_contiguous() and param.dim() == 2
