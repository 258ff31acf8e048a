"""Best k of the candidate pairs of a product-key search.

Lample et al. (2019): with the two halves' best k sub-key scores sorted (top1, top2), the best k
slots are among the pairs (i, j) whose score is top1[i] + top2[j]; the search keeps only the
C ~ k ln k pairs with (i+1)(j+1) <= k (`ProductKeyLookup.search`). The portable path builds the
(rows, C) candidate scores with two index_selects and an add, then runs `torch.topk`. On CPU,
when the kernel back-end allows it (`extmem.memory.kernels`), `kernels.pair_topk` scores the C
pairs of a row and keeps the best k in one pass, returning only the winning positions (i, j).
Scores are then gathered from top1 and top2 with autograd, so gradients are unchanged. Same
winners as the portable path up to the order of exact ties (tested).
"""

from __future__ import annotations

import torch

from extmem.memory.kernels import backend
from extmem.memory.kernels.pair_topk import best_candidate_numbers
from extmem.memory.topk import MIN_ROWS


def best_pairs(top1: torch.Tensor, top2: torch.Tensor, first: torch.Tensor,
               second: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (i, j) of the k best pairs top1[i] + top2[j] among the candidates
    (first[c], second[c]), best first: top1, top2 (..., k), first, second (C,) -> (..., k) x 2."""
    rows = top1.numel() // max(top1.shape[-1], 1)
    if backend.fused_available(top1, top2) and rows >= MIN_ROWS and first.numel() >= k:
        out_c = best_candidate_numbers(top1.reshape(rows, -1), top2.reshape(rows, -1), first,
                                       second, k)  # (R, k) candidate numbers
        out_c = out_c.view(*top1.shape[:-1], k)
        return first[out_c], second[out_c]
    cand = top1.index_select(-1, first) + top2.index_select(-1, second)  # (..., C)
    _, pos = cand.topk(k, dim=-1)  # (..., k)
    return first[pos], second[pos]
