"""Autograd-aware collectives for sharded tables, built on `torch.distributed`.

Only all_gather and all_reduce are used, so they run on gloo (CPU) as well as NCCL:
- `gather_from_ranks(x)`: (n, ...) per rank -> (W*n, ...) on every rank, rank order.
  Backward: the gradient of rank r's piece is the sum over ranks of their gradients for it.
- `sum_to_own_rows(partial)`: (W*n, ...) partial sums on every rank -> the sum over ranks of
  this rank's n rows. Backward: every rank's output gradient, gathered (W*n, ...).
- `scale_grad(x, s)`: identity forward, gradient times s (dense or sparse).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    pieces = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(pieces, x.contiguous())
    return torch.cat(pieces)


def _own_rows(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0] // dist.get_world_size()
    start = dist.get_rank() * n
    return x[start:start + n]


class _GatherFromRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _all_gather_cat(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return _own_rows(grad)


class _SumToOwnRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, partial: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = partial.contiguous().clone()
        dist.all_reduce(total)
        return _own_rows(total).clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _all_gather_cat(grad)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.scale, None


def gather_from_ranks(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) on each rank -> (W*n, ...) on every rank; differentiable."""
    if not x.requires_grad:
        return _all_gather_cat(x)
    return _GatherFromRanks.apply(x)


def sum_to_own_rows(partial: torch.Tensor) -> torch.Tensor:
    """(W*n, ...) partial sums -> (n, ...) this rank's rows summed over ranks; differentiable."""
    return _SumToOwnRows.apply(partial)


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    return _ScaleGrad.apply(x, scale)
