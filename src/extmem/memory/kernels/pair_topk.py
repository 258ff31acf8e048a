"""numba best-k of the candidate pairs of a product-key search: accelerates
`extmem.memory.pair_topk.best_pairs`.

Lample et al. (2019): with the two halves' best k sub-key scores sorted (top1, top2), the best
k slots are among the pairs (i, j) scored top1[i] + top2[j]; the search keeps only the
C ~ k ln k pairs with (i+1)(j+1) <= k. This kernel scores the C pairs of a row and keeps the
best k in one pass (insertion, parallel over rows; the insertion step is the top-k kernel's),
returning only the winning candidate numbers. Must equal the portable path (two index_selects,
an add and `torch.topk`) up to the order of exact ties.
"""

from __future__ import annotations

import torch

from extmem.memory.kernels.backend import jit_once
from extmem.memory.kernels.topk import insert_sorted


def _build(numba):
    @numba.njit(parallel=True, cache=True, nogil=True)
    def best_candidates(top1, top2, first, second, out_c, scratch):
        # top1, top2 (R, k) float32; first, second (C,) int64 -> out_c (R, k) best candidates
        k = out_c.shape[1]
        for r in numba.prange(top1.shape[0]):
            cnt = 0  # scratch[r]: the best scores so far, descending
            for c in range(first.shape[0]):
                v = top1[r, first[c]] + top2[r, second[c]]
                cnt = insert_sorted(scratch[r], out_c[r], cnt, k, v, c)
    return best_candidates


kernel = jit_once(_build)


def best_candidate_numbers(top1: torch.Tensor, top2: torch.Tensor, first: torch.Tensor,
                           second: torch.Tensor, k: int) -> torch.Tensor:
    """top1, top2 (R, k') float32 CPU; first, second (C,) int64 -> (R, k) numbers c of the k
    best candidates top1[r, first[c]] + top2[r, second[c]], best first."""
    rows = top1.shape[0]
    out_c = torch.zeros(rows, k, dtype=torch.int64)  # (R, k) candidate numbers
    scratch = torch.empty(rows, k, dtype=torch.float32)  # (R, k) running best scores
    kernel()(top1.detach().contiguous().numpy(), top2.detach().contiguous().numpy(),
             first.contiguous().numpy(), second.contiguous().numpy(), out_c.numpy(),
             scratch.numpy())
    return out_c
