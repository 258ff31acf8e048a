"""Fused lazy-Adam row update on CPU (optional `fast` extra: numba).

`LazyAdam.step` in plain torch gathers the touched rows of the value, m and v into buffers,
runs five elementwise passes over them and scatters them back: with a step that touches
hundreds of thousands of rows (a 1M-slot PKM reading 4,096 tokens x 4 heads x 32 slots touches
~40 % of the table) each pass streams hundreds of MB through memory. This kernel updates each
touched row in place in one pass (parallel over rows): read g, m, v, p once, write m, v, p
once. Same formulas and float32 arithmetic as the torch path (lerp for m, addcmul for v,
bias-corrected sqrt(v) + eps, decoupled decay, addcdiv), so results agree to rounding
(tested against the torch path and the lazy-Adam reference).
Used for CPU float32 tables when numba is installed and torch owns every core (as the fused
top-k: numba's pool spans every core).
"""

from __future__ import annotations

import numpy as np
import torch

from extmem.memory import topk


def _build(numba):
    @numba.njit(parallel=True, cache=True, nogil=True)
    def lazy_adam_rows(p, m, v, rows, g, w1, b2, w2, bc2, eps, decay, step_size):
        # p, m, v (N, d) float32 updated in place at `rows` (U,) with g (U, d) float32
        for u in numba.prange(rows.shape[0]):
            r = rows[u]
            for j in range(p.shape[1]):
                gj = g[u, j]
                mj = m[r, j] + w1 * (gj - m[r, j])       # m.lerp_(g, 1 - beta1)
                vj = v[r, j] * b2 + w2 * (gj * gj)       # v.mul_(b2).addcmul_(g, g, 1 - b2)
                m[r, j] = mj
                v[r, j] = vj
                denom = np.sqrt(vj / bc2) + eps
                p[r, j] = p[r, j] * decay + step_size * (mj / denom)
    return lazy_adam_rows


_kernel = topk.jit_once(_build)


def available(param: torch.Tensor) -> bool:
    return param.is_contiguous() and param.dim() == 2 and topk.fused_cpu(param)


def lazy_adam_rows(param: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                   rows: torch.Tensor, grad_rows: torch.Tensor, lr: float, beta1: float,
                   beta2: float, eps: float, weight_decay: float, step: float) -> None:
    """One lazy-Adam update of `rows` (U,) of param / exp_avg / exp_avg_sq (N, d), in place."""
    f32 = np.float32
    _kernel()(param.detach().numpy(), exp_avg.numpy(), exp_avg_sq.numpy(),
              rows.contiguous().numpy(), grad_rows.float().contiguous().numpy(),
              f32(1 - beta1), f32(beta2), f32(1 - beta2), f32(1 - beta2 ** step), f32(eps),
              f32(1 - lr * weight_decay), f32(-lr / (1 - beta1 ** step)))
