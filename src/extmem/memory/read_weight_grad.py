"""Gradient of a weighted embedding bag w.r.t. its per-read weights.

Every lookup of the two papers reads its memory as a weighted sum of table rows (the product-key
memory of Lample et al. 2019 with softmax weights over k slots per head), so training needs the
gradient of those weights. For out[b] = sum_j w[b, j] V[idx[b, j]],
d loss / d w[b, j] = <V[idx[b, j]], g[b]>: one dot product per read. ATen's
`_embedding_bag_per_sample_weights_backward` (the portable path) computes it serially on CPU
(126-133 ms for 4,096 tokens x 128 reads of a 1M x 256 table here, 3.5x the forward gather);
the numba kernel of `kernels.read_weight_grad` runs it parallel over bags, with the bag's
output gradient row in cache, so it costs about one gather of the rows read (~40 ms,
docs/performance.md). The kernel is used for contiguous 2-D tables when the kernel back-end
allows it (`extmem.memory.kernels`: CPU float32, numba, `EXTMEM_KERNELS`); otherwise ATen's op.
Same values up to float summation order (tested).
"""

from __future__ import annotations

import torch

from extmem.memory.kernels import backend
from extmem.memory.kernels.read_weight_grad import read_weight_grad as fused_read_weight_grad


def read_weight_grad(table: torch.Tensor, bags: torch.Tensor, grad_out: torch.Tensor,
                     fused: bool = True) -> torch.Tensor:
    """<table[bags[b, j]], grad_out[b]> for every read: table (N, d), bags (n, r), grad_out
    (n, d) -> (n, r) in the table's dtype. `fused=False` always takes ATen's op."""
    n, r = bags.shape
    if (fused and backend.fused_available(table) and table.is_contiguous()
            and table.dim() == 2):
        return fused_read_weight_grad(table, bags, grad_out)
    flat = bags.reshape(-1)  # (R,)
    offset2bag = torch.arange(n, device=flat.device).repeat_interleave(r)  # (R,)
    offsets = torch.arange(0, n * r, r, device=flat.device)  # (n,)
    grad = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        grad_out.to(table.dtype), table, flat, offsets, offset2bag, 0, -1)  # mode 0 = sum
    return grad.view(n, r)
