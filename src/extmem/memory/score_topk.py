"""Sub-key scoring + top-k with a sparse backward, for the product-key search.

The search scores every query half against all n sub-keys, (2H, M, half) @ (2H, half, n), and
keeps the best k of each row. Autograd through `bmm` + `gather` would rebuild a dense
(2H, M, n) zero gradient with k non-zeros per row and run two more full-size matmuls on it:
with k = 8 of n = 1,024 that is >99 % zeros, and it was the largest cost of a training step
with a 1M-slot memory (docs/performance.md). Only the k kept scores carry gradient, so:

    d q[b, m]    = sum_j g[b, m, j] * K[b, idx[b, m, j]]        (an embedding bag over keys)
    d K[b, i]    = sum_{(m, j): idx[b, m, j] = i} g[b, m, j] * q[b, m]

both computed from the k selected entries (`F.embedding_bag` with per-sample weights, and for
dK the numba kernel of `kernels.subkey_grad` where the kernel back-end allows it, else
`row_sparse_grad`; `dense_rows_grad` while `torch.compile` traces, whose shapes do not depend on
the indices), and the forward keeps no (2H, M, n) scores for backward. Same values,
indices and gradients as `topk(torch.bmm(q, K^T), k)` up to float summation order (tested via
the search's reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from extmem.memory.kernels import backend
from extmem.memory.kernels.subkey_grad import subkey_grad
from extmem.memory.sparse import dense_rows_grad, row_sparse_grad
from extmem.memory.topk import topk

SCORE_CHUNK = 1 << 20  # floats of sub-key scores per chunk (4 MiB in fp32): cache-sized, bounds memory


class _ScoreTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, keys: torch.Tensor, k: int):  # type: ignore[override]
        # q (B, M, half); keys (B, n, half) -> values, indices (B, M, k), best first
        n = keys.shape[1]
        # token chunks of <= SCORE_CHUNK floats: the (B, chunk, n) scores stay cache-sized and
        # reuse freed memory instead of page-faulting a fresh (B, M, n) tensor
        step = max(1, SCORE_CHUNK // (q.shape[0] * n))
        keys_t = keys.transpose(1, 2)  # (B, half, n)
        parts = [topk(torch.bmm(q[:, i:i + step], keys_t), k) for i in range(0, q.shape[1], step)]
        values = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts], 1)
        indices = parts[0][1] if len(parts) == 1 else torch.cat([p[1] for p in parts], 1)
        ctx.save_for_backward(q, keys, indices)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values: torch.Tensor, _grad_indices):  # type: ignore[override]
        q, keys, indices = ctx.saved_tensors
        b, m, k = indices.shape
        n, half = keys.shape[1], keys.shape[2]
        offsets = (torch.arange(b, device=indices.device) * n).view(b, 1, 1)
        bags = (indices + offsets).reshape(b * m, k)  # (B*M, k) rows of the flat (B*n, half) keys
        weights = grad_values.reshape(b * m, k).to(keys.dtype)  # (B*M, k)
        grad_q = grad_keys = None
        if ctx.needs_input_grad[0]:
            grad_q = F.embedding_bag(bags, keys.reshape(b * n, half), mode="sum",
                                     per_sample_weights=weights).view(b, m, half)
        if ctx.needs_input_grad[1] and backend.fused_available(q, keys):
            grad_keys = subkey_grad(q, indices, grad_values, n)  # (B, n, half)
        elif ctx.needs_input_grad[1]:
            flat_q = q.reshape(b * m, half).to(keys.dtype)  # (B*M, half)
            if torch.compiler.is_compiling():  # static shapes: no sort / unique of the rows
                grad_keys = dense_rows_grad(flat_q, bags, weights, b * n).view(b, n, half)
            else:
                grad_keys = row_sparse_grad(flat_q, bags, weights, b * n).to_dense()
                grad_keys = grad_keys.view(b, n, half)
        return grad_q, grad_keys, None


def score_topk(q: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best k of q @ keys^T per row: q (B, M, half), keys (B, n, half) -> (B, M, k) x 2."""
    return _ScoreTopK.apply(q, keys, k)
