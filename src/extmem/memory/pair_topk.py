"""Best k of the candidate pairs of a product-key search, fused on CPU (numba).

Lample et al. (2019): with the two halves' best k sub-key scores sorted (top1, top2), the best k
slots are among the pairs (i, j) whose score is top1[i] + top2[j]; the search keeps only the
C ~ k ln k pairs with (i+1)(j+1) <= k (`ProductKeyLookup.search`). The portable path builds the
(rows, C) candidate scores with two index_selects and an add, then runs `torch.topk`; this
kernel scores the C pairs of a row and keeps the best k in one pass (insertion, parallel over
rows), returning only the winning positions (i, j). Scores are then gathered from top1 and top2
with autograd, so gradients are unchanged. Same winners as the portable path up to the order of
exact ties (tested). Used for CPU float32 rows when the `fast` extra (numba) is installed and
torch owns every core (the rule of every numba kernel here).
"""

from __future__ import annotations

import torch

from extmem.memory import topk

_KERNEL = None


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        numba = topk.numba_module()

        @numba.njit(parallel=True, cache=True, nogil=True)
        def best_pairs(top1, top2, first, second, out_i, out_j, scratch):
            # top1, top2 (R, k) float32; first, second (C,) int64 -> out_i, out_j (R, k)
            k = out_i.shape[1]
            for r in numba.prange(top1.shape[0]):
                vals = scratch[r]  # (k,) best scores so far, descending
                cnt = 0
                for c in range(first.shape[0]):
                    v = top1[r, first[c]] + top2[r, second[c]]
                    if cnt < k:
                        p = cnt
                        cnt += 1
                    elif v > vals[k - 1]:
                        p = k - 1
                    else:
                        continue
                    while p > 0 and vals[p - 1] < v:
                        vals[p] = vals[p - 1]
                        out_i[r, p] = out_i[r, p - 1]
                        out_j[r, p] = out_j[r, p - 1]
                        p -= 1
                    vals[p] = v
                    out_i[r, p] = first[c]
                    out_j[r, p] = second[c]
        _KERNEL = best_pairs
    return _KERNEL


def best_pairs(top1: torch.Tensor, top2: torch.Tensor, first: torch.Tensor,
               second: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (i, j) of the k best pairs top1[i] + top2[j] among the candidates
    (first[c], second[c]), best first: top1, top2 (..., k), first, second (C,) -> (..., k) x 2."""
    rows = top1.numel() // max(top1.shape[-1], 1)
    if rows >= topk.MIN_ROWS and first.numel() >= k and topk.fused_cpu(top1, top2):
        flat1 = top1.detach().reshape(rows, -1).contiguous()  # (R, k)
        flat2 = top2.detach().reshape(rows, -1).contiguous()  # (R, k)
        out_i = torch.empty(rows, k, dtype=torch.int64)
        out_j = torch.empty(rows, k, dtype=torch.int64)
        scratch = torch.empty(rows, k, dtype=torch.float32)  # (R, k) running best scores
        _kernel()(flat1.numpy(), flat2.numpy(), first.numpy(), second.numpy(), out_i.numpy(),
                  out_j.numpy(), scratch.numpy())
        shape = (*top1.shape[:-1], k)
        return out_i.view(shape), out_j.view(shape)
    cand = top1.index_select(-1, first) + top2.index_select(-1, second)  # (..., C)
    _, pos = cand.topk(k, dim=-1)  # (..., k)
    return first[pos], second[pos]
