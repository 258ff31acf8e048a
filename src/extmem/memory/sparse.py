"""Row-sparse weighted embedding bag: gradients only for the table rows read in the step.

docs/performance.md: a dense gradient for a large table costs a table-sized tensor and an
optimizer pass over every row per step. `sparse_bag` computes the same forward as
`F.embedding_bag(mode="sum", per_sample_weights=w)`, but its backward returns the table
gradient as a *coalesced* sparse COO tensor holding one row per distinct row read (sorted
indices, duplicates summed), so the step's cost follows the rows read, not the table size.

Backward, for R = bags * reads_per_bag reads of U distinct rows:
- d out / d w: per-read dot product <V[idx_r], g[bag_r]> (`read_weight_grad`: a fused numba
  kernel on CPU, else ATen's embedding-bag per-sample-weight backward; no (R, d) tensor);
- d out / d V: sort the reads by row, then one embedding bag over the *output gradient*
  (B*T, d) with the reads of each distinct row as a bag: values[u] = sum_r w_r g[bag_r].
  The gathered table is the small output gradient (cache resident), so this costs about one
  pass over the U touched rows.
Unlike `F.embedding_bag(..., sparse=True)` (which emits R uncoalesced rows, i.e. H*k rows per
token, that must be sorted and summed later), the gradient is already coalesced.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from extmem.memory.read_weight_grad import read_weight_grad


class _RowSparseBag(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, bags: torch.Tensor,  # type: ignore[override]
                weights: torch.Tensor) -> torch.Tensor:
        # weight (N, d); bags (n, r) int64; weights (n, r) -> out (n, d)
        out = F.embedding_bag(bags, weight, mode="sum", per_sample_weights=weights)
        ctx.save_for_backward(weight, bags, weights)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        weight, bags, weights = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_weight = grad_weights = None
        if ctx.needs_input_grad[2]:
            grad_weights = read_weight_grad(weight, bags, grad_out).to(weights.dtype)
        if ctx.needs_input_grad[0]:
            grad_weight = row_sparse_grad(grad_out, bags, weights, weight.shape[0])
            grad_weight = grad_weight.to(weight.dtype)
        return grad_weight, None, grad_weights


def row_sparse_grad(grad_out: torch.Tensor, bags: torch.Tensor, weights: torch.Tensor,
                    num_rows: int) -> torch.Tensor:
    """Coalesced sparse (num_rows, d) gradient of sum_r w_r V[idx_r] per bag, given g (n, d)."""
    r = bags.shape[1]
    flat = bags.reshape(-1)  # (R,)
    rows_sorted, order = flat.sort()  # (R,)
    rows, counts = torch.unique_consecutive(rows_sorted, return_counts=True)  # (U,)
    offsets = counts.cumsum(0) - counts  # (U,) start of each distinct row's reads
    bag_of_read = order // r  # (R,) which output row read it
    values = F.embedding_bag(bag_of_read, grad_out, offsets=offsets, mode="sum",
                             per_sample_weights=weights.reshape(-1)[order].to(grad_out.dtype))
    return torch.sparse_coo_tensor(rows.unsqueeze(0), values, (num_rows, grad_out.shape[1]),
                                   is_coalesced=True, check_invariants=False)  # (N, d), U rows


def dense_rows_grad(grad_out: torch.Tensor, bags: torch.Tensor, weights: torch.Tensor,
                    num_rows: int) -> torch.Tensor:
    """`row_sparse_grad(...).to_dense()` with shapes that do not depend on the indices (what
    `torch.compile` can trace without a graph break): one scatter-add of the R weighted reads
    into a dense (num_rows, d) zero tensor. Equal up to float summation order."""
    r = bags.shape[1]
    reads = grad_out.repeat_interleave(r, dim=0) * weights.reshape(-1, 1).to(grad_out.dtype)
    out = grad_out.new_zeros(num_rows, grad_out.shape[1])  # (N, d)
    return out.index_add_(0, bags.reshape(-1), reads)  # (R, d) reads summed into their rows


def sparse_bag(weight: torch.Tensor, bags: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted bag of rows, weight (N, d), bags and weights (n, r) -> (n, d), row-sparse grad."""
    return _RowSparseBag.apply(weight, bags, weights)


class _Gather(torch.autograd.Function):
    """`weight[idx]`; subclasses say how the (N, D) table gradient is formed."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # weight (N, D); idx (...) int64 -> rows (..., D)
        ctx.save_for_backward(idx)
        ctx.num_rows = weight.shape[0]
        return weight[idx]


class _RowSparseGather(_Gather):
    @staticmethod
    def backward(ctx, grad_rows: torch.Tensor):  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        flat_grad = grad_rows.reshape(-1, grad_rows.shape[-1]).contiguous()  # (R, D)
        reads = idx.reshape(-1, 1)  # (R, 1): each read its own bag of one row
        ones = flat_grad.new_ones(reads.shape)
        if torch.compiler.is_compiling():  # static shapes: no sort / unique of the rows
            return dense_rows_grad(flat_grad, reads, ones, ctx.num_rows), None
        return row_sparse_grad(flat_grad, reads, ones, ctx.num_rows), None


class _DenseGather(_Gather):
    @staticmethod
    def backward(ctx, grad_rows: torch.Tensor):  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        flat_grad = grad_rows.reshape(-1, grad_rows.shape[-1])  # (R, D)
        grad = flat_grad.new_zeros(ctx.num_rows, flat_grad.shape[1])  # (N, D)
        return grad.index_add_(0, idx.reshape(-1), flat_grad), None


def dense_gather(weight: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """`weight[idx]`, (N, D) and (...) -> (..., D), with the same dense gradient as autograd's,
    summed by one `index_add_` instead of `index_put_(accumulate=True)`: gather and backward
    1.50x faster on one CPU thread for PEER's reads (2,048 x 32 rows of 64 from 65,536; `extmem
    bench kernels`, `expert_gather_grad`; docs/performance.md). Equal up to float summation
    order."""
    return _DenseGather.apply(weight, idx)


def sparse_gather(weight: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """`weight[idx]`, (N, D) and (...) -> (..., D), with a coalesced row-sparse gradient (one
    row per distinct row read, the reads of a row summed): expert rows gathered as weights
    (PEER, `extmem.memory.experts`) train with the lazy optimizers like any value table."""
    return _RowSparseGather.apply(weight, idx)
