"""numba gradient of the kept sub-key scores w.r.t. the sub-keys: accelerates the dK part of
the backward of `extmem.memory.score_topk.score_topk`.

In the product-key search (Lample et al. 2019) each (head, half) row b keeps k of its n sub-key
scores s[b, m, i] = <q[b, m], K[b, i]>; only those carry gradient, so

    d K[b, i] = sum over kept (m, j) with idx[b, m, j] = i of g[b, m, j] * q[b, m].

The portable path (`score_topk`'s backward) sorts the M*k reads of each row by sub-key and sums
them with an embedding bag (`extmem.memory.sparse.row_sparse_grad`); this kernel accumulates
the reads straight into the small, cache-resident (n, half) sub-key table of each row (512 KB at
n = 1,024, half = 128), one task per row b (rows own disjoint outputs: no races): 7 ms instead
of 27-67 ms at 4,096 tokens x 8 rows x k = 32 (docs/performance.md). Must equal the portable
sums up to float summation order.
"""

from __future__ import annotations

import torch

from extmem.memory.kernels.backend import jit_once


def _build(numba):
    @numba.njit(parallel=True, cache=True, nogil=True, fastmath=True)
    def accumulate(q, idx, g, out):
        # q (B, M, half), idx (B, M, k) int64, g (B, M, k) -> out (B, n, half), zeroed
        for b in numba.prange(idx.shape[0]):
            for m in range(idx.shape[1]):
                for j in range(idx.shape[2]):
                    row, w = idx[b, m, j], g[b, m, j]
                    for c in range(q.shape[2]):
                        out[b, row, c] += w * q[b, m, c]
    return accumulate


kernel = jit_once(_build)


def subkey_grad(q: torch.Tensor, indices: torch.Tensor, grad_values: torch.Tensor,
                n: int) -> torch.Tensor:
    """q (B, M, half), indices and grad_values (B, M, k) -> dense (B, n, half) float32."""
    out = torch.zeros(q.shape[0], n, q.shape[2], dtype=torch.float32)  # (B, n, half)
    kernel()(q.float().contiguous().numpy(), indices.contiguous().numpy(),
             grad_values.float().contiguous().numpy(), out.numpy())
    return out
