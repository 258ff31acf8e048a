"""numba per-read weight gradient of a weighted embedding bag: accelerates
`extmem.memory.read_weight_grad.read_weight_grad`.

For out[b] = sum_j w[b, j] V[idx[b, j]], d loss / d w[b, j] = <V[idx[b, j]], g[b]>: one dot
product per read. ATen's `_embedding_bag_per_sample_weights_backward` (the portable path, which
this must equal up to float summation order) computes it serially on CPU; this kernel runs it
parallel over bags with the bag's output-gradient row in cache, so it costs about one gather of
the rows read (docs/performance.md).
"""

from __future__ import annotations

import numpy as np
import torch

from extmem.memory.kernels.backend import jit_once


def _build(numba):
    @numba.njit(parallel=True, cache=True, nogil=True, fastmath=True)
    def read_dots(table, bags, grad, out):
        # table (N, d), bags (n, r) int64, grad (n, d) float32 -> out (n, r)
        for b in numba.prange(bags.shape[0]):
            for j in range(bags.shape[1]):
                row = bags[b, j]
                acc = np.float32(0.0)
                for c in range(table.shape[1]):
                    acc += table[row, c] * grad[b, c]
                out[b, j] = acc
    return read_dots


kernel = jit_once(_build)


def read_weight_grad(table: torch.Tensor, bags: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """<table[bags[b, j]], grad_out[b]>: table (N, d) contiguous float32 CPU, bags (n, r),
    grad_out (n, d) -> (n, r) float32."""
    out = torch.empty(*bags.shape, dtype=torch.float32)  # (n, r)
    kernel()(table.detach().numpy(), bags.contiguous().numpy(),
             grad_out.float().contiguous().numpy(), out.numpy())
    return out
