"""Top-k over the last dimension, with an optional fused CPU kernel (numba).

`torch.topk` on CPU costs ~15 us per row of 1024 floats (a general nth_element + sort); the
product-key search runs it on tokens x 2H rows, where it is the largest single cost of a
lookup (docs/performance.md). With numba installed (`pip install extmem[fast]`), CPU fp32
inputs use an insertion top-k per row, parallel over rows, after a vectorised pass that finds a
floor no winner lies below (the k-th largest of 2k block maxima): 2.5-3.5x faster than
torch.topk here at n = 1,024 (docs/performance.md).
Values are then gathered from the input with `torch.gather`, so gradients are unchanged.
Ties: both return one of the tied positions; which one may differ. NaN scores are not
expected (torch.topk ranks NaN first; the kernel's result is then unspecified, but its
indices stay in range).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as _np
import torch

try:  # optional: the `fast` extra
    import numba as _numba
except ImportError:  # pragma: no cover - depends on the environment
    _numba = None

MIN_ROWS = 256  # below this, dispatch overhead beats the gain: use torch.topk


def jit_once(build: Callable) -> Callable:
    """A getter that builds a numba kernel with `build(numba)` on first use and returns the
    same kernel afterwards (numba is optional, so kernels are compiled lazily)."""
    kernel = None

    def get():
        nonlocal kernel
        if kernel is None:
            kernel = build(_numba)
        return kernel
    return get


def _insert_sorted(vals, idxs, cnt, k, v, j):
    """vals[:cnt] (descending) and idxs: the best <= k values so far. Adds v (index j) if it
    belongs there, shifting smaller ones down; returns the new count. Shared by the top-k
    kernels (compiled into them: a module-level numba function, so their caches stay valid)."""
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


insert_sorted = (None if _numba is None
                 else _numba.njit(inline="always", cache=True, nogil=True)(_insert_sorted))


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


kth_largest = (None if _numba is None
               else _numba.njit(inline="always", cache=True, nogil=True)(_kth_largest))
ROWS_PER_TASK = 64  # rows per parallel task (one scratch buffer each)


def _build_topk(numba):
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


_kernel = jit_once(_build_topk)


def owns_all_cores() -> bool:
    """numba's thread pool spans every core; when torch was given fewer (OMP_NUM_THREADS=1
    under torchrun or in parallel sweeps) its spinning workers starve the other processes
    (measured: a 2-process step 5x slower), so the kernel is used only then."""
    return torch.get_num_threads() >= _numba.config.NUMBA_NUM_THREADS


def fused_available() -> bool:
    return _numba is not None


def fused_cpu(*tensors: torch.Tensor) -> bool:
    """The rule of every numba kernel in extmem: numba installed, torch owning every core, and
    all `tensors` float32 on the CPU."""
    return (_numba is not None and all(t.device.type == "cpu" and t.dtype == torch.float32
                                       for t in tensors) and owns_all_cores())


def topk(x: torch.Tensor, k: int, fused: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the k largest along the last dim, sorted descending, like torch.topk."""
    rows = x.numel() // max(x.shape[-1], 1)
    if not fused or rows < MIN_ROWS or k > x.shape[-1] or not fused_cpu(x):
        return x.topk(k, dim=-1)
    flat = x.detach().reshape(-1, x.shape[-1]).contiguous()  # (R, n)
    idx = torch.zeros(flat.shape[0], k, dtype=torch.int64)  # in range whatever the input
    best = torch.empty(flat.shape[0], k, dtype=torch.float32)  # (R, k) scratch of the kernel
    _kernel()(flat.numpy(), k, idx.numpy(), best.numpy())
    idx = idx.view(*x.shape[:-1], k)
    return x.gather(-1, idx), idx
