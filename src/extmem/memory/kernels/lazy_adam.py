"""numba lazy-Adam row update in place: accelerates `extmem.train.sparse_optim.LazyAdam.step`
(dispatched by `extmem.train.fused_rows`).

The portable path gathers the touched rows of the value, m and v into buffers, runs five
elementwise passes over them and scatters them back; this kernel updates each touched row in
place in one pass (parallel over rows): read g, m, v, p once, write m, v, p once. Same formulas
and float32 arithmetic as the portable path (lerp for m, addcmul for v, bias-corrected
sqrt(v) + eps, decoupled decay, addcdiv), which it must equal to rounding.
"""

from __future__ import annotations

import numpy as np
import torch

from extmem.memory.kernels.backend import jit_once


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


kernel = jit_once(_build)


def lazy_adam_rows(param: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                   rows: torch.Tensor, grad_rows: torch.Tensor, lr: float, beta1: float,
                   beta2: float, eps: float, weight_decay: float, step: float) -> None:
    """One lazy-Adam update of `rows` (U,) of param / exp_avg / exp_avg_sq (N, d) contiguous
    float32 CPU, in place, with grad_rows (U, d)."""
    f32 = np.float32
    kernel()(param.detach().numpy(), exp_avg.numpy(), exp_avg_sq.numpy(),
             rows.contiguous().numpy(), grad_rows.float().contiguous().numpy(),
             f32(1 - beta1), f32(beta2), f32(1 - beta2), f32(1 - beta2 ** step),
             f32(eps), f32(1 - lr * weight_decay), f32(-lr / (1 - beta1 ** step)))
