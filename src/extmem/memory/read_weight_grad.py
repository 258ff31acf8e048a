"""Gradient of a weighted embedding bag w.r.t. its per-read weights, fused on CPU (numba).

Every lookup of the two papers reads its memory as a weighted sum of table rows (the product-key
memory of Lample et al. 2019 with softmax weights over k slots per head), so training needs the
gradient of those weights. For out[b] = sum_j w[b, j] V[idx[b, j]],
d loss / d w[b, j] = <V[idx[b, j]], g[b]>: one dot product per read. ATen's
`_embedding_bag_per_sample_weights_backward` computes it serially on CPU (126-133 ms for 4,096
tokens x 128 reads of a 1M x 256 table here, 3.5x the forward gather); this kernel runs it
parallel over bags, with the bag's output gradient row in cache, so it costs about one gather
of the rows read (~40 ms, docs/performance.md). Used for CPU float32 tables when the `fast`
extra (numba) is installed and torch owns every core (`topk.fused_cpu`); otherwise ATen's op.
Same values up to float summation order (tested).
"""

from __future__ import annotations

import numpy as np
import torch

from extmem.memory import topk


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


_kernel = topk.jit_once(_build)


def fused_available(table: torch.Tensor) -> bool:
    return table.is_contiguous() and table.dim() == 2 and topk.fused_cpu(table)


def read_weight_grad(table: torch.Tensor, bags: torch.Tensor, grad_out: torch.Tensor,
                     fused: bool = True) -> torch.Tensor:
    """<table[bags[b, j]], grad_out[b]> for every read: table (N, d), bags (n, r), grad_out
    (n, d) -> (n, r) in the table's dtype."""
    n, r = bags.shape
    if fused and fused_available(table):
        out = torch.empty(n, r, dtype=torch.float32)  # (n, r)
        _kernel()(table.detach().numpy(), bags.contiguous().numpy(),
                  grad_out.float().contiguous().numpy(), out.numpy())
        return out
    flat = bags.reshape(-1)  # (R,)
    offset2bag = torch.arange(n, device=flat.device).repeat_interleave(r)  # (R,)
    offsets = torch.arange(0, n * r, r, device=flat.device)  # (n,)
    grad = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        grad_out.to(table.dtype), table, flat, offsets, offset2bag, 0, -1)  # mode 0 = sum
    return grad.view(n, r)
