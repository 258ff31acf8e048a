"""numba top-k over the rows of a float32 matrix: accelerates `extmem.memory.topk.topk`.

Must equal `torch.topk(x, k, dim=-1)`: the same values, best first, and for each a position
holding it (which of several tied positions may differ). `torch.topk` on CPU costs ~15 us per
row of 1024 floats (a general nth_element + sort); this kernel runs an insertion top-k per row,
parallel over rows, after a vectorised pass that finds a floor no winner lies below (the k-th
largest of 2k block maxima): 2.5-3.5x faster at n = 1,024 (docs/performance.md). NaN scores are
not expected (the result is then unspecified, but indices stay in range).

`insert_sorted` is shared with the best-pairs kernel (`kernels.pair_topk`): module-level numba
functions compiled into the kernels, so their on-disk caches stay valid.
"""

from __future__ import annotations

import numpy as _np
import torch

from extmem.memory.kernels.backend import jit_once, numba

ROWS_PER_TASK = 64  # rows per parallel task (one scratch buffer each)


def _insert_sorted(vals, idxs, cnt, k, v, j):
    """vals[:cnt] (descending) and idxs: the best <= k values so far. Adds v (index j) if it
    belongs there, shifting smaller ones down; returns the new count."""
    if cnt < k:
        p = cnt
        cnt += 1
    elif v > vals[k - 1]:
        p = k - 1
    else:
        return cnt
    while p > 0 and vals[p - 1] < v:
        vals[p] = vals[p - 1]
        idxs[p] = idxs[p - 1]
        p -= 1
    vals[p] = v
    idxs[p] = j
    return cnt


insert_sorted = (None if numba is None
                 else numba.njit(inline="always", cache=True, nogil=True)(_insert_sorted))


def _kth_largest(vals, m, k):
    """The k-th largest of vals[:m] (Wirth's selection; reorders vals in place)."""
    lo, hi, target = 0, m - 1, k - 1
    while lo < hi:
        pivot, i, j = vals[target], lo, hi
        while i <= j:
            while vals[i] > pivot:
                i += 1
            while pivot > vals[j]:
                j -= 1
            if i <= j:
                vals[i], vals[j] = vals[j], vals[i]
                i += 1
                j -= 1
        if j < target:
            lo = i
        if target < i:
            hi = j
    return vals[target]


kth_largest = (None if numba is None
               else numba.njit(inline="always", cache=True, nogil=True)(_kth_largest))


def _build(numba):
    @numba.njit(parallel=True, cache=True, nogil=True, fastmath=True)
    def topk_rows(x, k, out_i, out_v):  # x (R, n) float32 -> (R, k) int64 / float32
        rows, n = x.shape
        blocks = min(2 * k, n)
        width = n // blocks
        for task in numba.prange((rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
            maxima = _np.empty(blocks, _np.float32)  # (2k,) scratch, one per task
            for r in range(task * ROWS_PER_TASK, min(rows, (task + 1) * ROWS_PER_TASK)):
                # floor: the k-th largest of the maxima of 2k disjoint blocks. Those k maxima
                # are >= floor, so the k-th largest value is too: values below it cannot win.
                for b in range(blocks):
                    best = _np.float32(-_np.inf)
                    for j in range(b * width, (b + 1) * width):
                        best = max(best, x[r, j])
                    maxima[b] = best
                floor = kth_largest(maxima, blocks, k)
                cnt = 0  # out_v[r], out_i[r]: this row's best so far, descending
                for j in range(n):
                    v = x[r, j]
                    if v >= floor:
                        cnt = insert_sorted(out_v[r], out_i[r], cnt, k, v, j)
    return topk_rows


kernel = jit_once(_build)  # kernel()(x, k, out_i, out_v): the compiled kernel


def topk_indices(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the k largest of each row, best first: flat (R, n) float32 CPU -> (R, k)."""
    flat = flat.detach().contiguous()
    idx = torch.zeros(flat.shape[0], k, dtype=torch.int64)  # in range whatever the input
    best = torch.empty(flat.shape[0], k, dtype=torch.float32)  # (R, k) scratch of the kernel
    kernel()(flat.numpy(), k, idx.numpy(), best.numpy())
    return idx
