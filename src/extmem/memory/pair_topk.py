"""Best k of the candidate pairs of a product-key search, fused on CPU (numba).

Lample et al. (2019): with the two halves' best k sub-key scores sorted (top1, top2), the best k
slots are among the pairs (i, j) whose score is top1[i] + top2[j]; the search keeps only the
C ~ k ln k pairs with (i+1)(j+1) <= k (`ProductKeyLookup.search`). The portable path builds the
(rows, C) candidate scores with two index_selects and an add, then runs `torch.topk`; this
kernel scores the C pairs of a row and keeps the best k in one pass (insertion, parallel over
rows; the insertion step is the top-k kernel's), returning only the winning positions (i, j).
Scores are then gathered from top1 and top2 with autograd, so gradients are unchanged. Same
winners as the portable path up to the order of exact ties (tested). Used for CPU float32 rows
when the `fast` extra (numba) is installed and torch owns every core (`topk.fused_cpu`).
"""

from __future__ import annotations

import torch

from extmem.memory import topk
from extmem.memory.topk import insert_sorted


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


_kernel = topk.jit_once(_build)


def best_pairs(top1: torch.Tensor, top2: torch.Tensor, first: torch.Tensor,
               second: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (i, j) of the k best pairs top1[i] + top2[j] among the candidates
    (first[c], second[c]), best first: top1, top2 (..., k), first, second (C,) -> (..., k) x 2."""
    rows = top1.numel() // max(top1.shape[-1], 1)
    if rows >= topk.MIN_ROWS and first.numel() >= k and topk.fused_cpu(top1, top2):
        flat1 = top1.detach().reshape(rows, -1).contiguous()  # (R, k)
        flat2 = top2.detach().reshape(rows, -1).contiguous()  # (R, k)
        out_c = torch.zeros(rows, k, dtype=torch.int64)  # (R, k) candidate numbers
        scratch = torch.empty(rows, k, dtype=torch.float32)  # (R, k) running best scores
        _kernel()(flat1.numpy(), flat2.numpy(), first.numpy(), second.numpy(), out_c.numpy(),
                  scratch.numpy())
        out_c = out_c.view(*top1.shape[:-1], k)
        return first[out_c], second[out_c]
    cand = top1.index_select(-1, first) + top2.index_select(-1, second)  # (..., C)
    _, pos = cand.topk(k, dim=-1)  # (..., k)
    return first[pos], second[pos]
