"""AltUp's predict and correct steps for one layer (Baykal et al. 2023, "Alternating Updates for
Efficient Transformers").

The stream holds K_total blocks per token, `(B, T, K, d)`; `j` is the active block.

1. predict: `xhat_i = sum_m p_im x_m`
2. compute: `y = L(xhat_j)` (the ordinary layer, run by the caller)
3. correct: `x_i <- xhat_i + g_i (y - xhat_j)`

`ScalarCoefficients` learns p (K x K) and g (K) per layer (the paper). `RouterCoefficients`
produces them per token from the active block, as Gemma 3n's `Gemma3nTextAltUp`:
`r(x) = tanh(W_r norm(x) / d)`, `p = I + reshape(W_p r(xhat_j))`, `g = 1 + W_c r(y)`.

Both are stored as offsets from the identity (p = I + P, g = 1 + G): zero offsets are the dense
model, and weight decay pulls towards it rather than towards a predictor of zeros.
"""

from __future__ import annotations

import torch
from torch import nn

from extmem.layers import RMSNorm


def _offsets(shape: tuple[int, int], random: bool, identity: float = 0.0) -> nn.Parameter:
    """Offsets from `identity * I`: zero (the dense model), or such that the total is drawn
    from N(0, 1/fan_in) (`init = "random"`)."""
    if not random:
        return nn.Parameter(torch.zeros(shape))
    drawn = torch.randn(shape) * shape[-1] ** -0.5
    return nn.Parameter(drawn - identity * torch.eye(*shape))


class ScalarCoefficients(nn.Module):
    """A learned K x K predictor and K correction gains (Baykal et al. 2023)."""

    def __init__(self, blocks: int, random: bool = False) -> None:
        super().__init__()
        self.predictor = _offsets((blocks, blocks), random, identity=1.0)  # p - I
        self.gains = nn.Parameter(torch.zeros(blocks))  # g - 1

    def predict(self, x: torch.Tensor, active: int) -> torch.Tensor:
        p = self.predictor + torch.eye(len(self.gains), device=x.device, dtype=x.dtype)
        return torch.einsum("im,btmd->btid", p, x)  # (B, T, K, d)

    def correct(self, xhat: torch.Tensor, y: torch.Tensor, active: int) -> torch.Tensor:
        innovation = y - xhat[:, :, active]  # (B, T, d)
        gains = 1.0 + self.gains  # (K,)
        return xhat + gains[:, None] * innovation[:, :, None, :]  # (B, T, K, d)

    def flops_per_token(self, d_model: int) -> int:
        k = len(self.gains)
        return 2 * k * k * d_model + d_model + 2 * k * d_model


class RouterCoefficients(nn.Module):
    """Per-token coefficients from a router on the active block (Gemma 3n's AltUp).

    Parameter names mirror `Gemma3nTextAltUp` (router_norm, modality_router, prediction_coefs,
    correction_coefs) so its weights copy over one to one. `coef_clip > 0` clips the coefficient
    weights to [-coef_clip, coef_clip] in the forward pass (Gemma 3n clamps them in place while
    training; the outputs agree whenever the weights lie inside the range).
    """

    def __init__(self, blocks: int, d_model: int, coef_clip: float, norm_eps: float,
                 random: bool = False) -> None:
        super().__init__()
        self.blocks, self.coef_clip = blocks, coef_clip
        self.router_norm = RMSNorm(d_model, norm_eps)
        # unit-variance router weights: inputs are scaled by 1/d (Gemma 3n), so r(x) starts at
        # order d^-1/2, small but non-zero, which lets the zero coefficient weights learn
        self.modality_router = nn.Parameter(torch.randn(blocks, d_model))  # (K, d)
        self.prediction_coefs = _offsets((blocks * blocks, blocks), random)  # (K*K, K)
        self.correction_coefs = _offsets((blocks, blocks), random)  # (K, K)
        self.register_buffer("router_input_scale", torch.tensor(d_model ** -1.0),
                             persistent=False)

    def _clip(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.clamp(-self.coef_clip, self.coef_clip) if self.coef_clip > 0 else weight

    def modalities(self, x: torch.Tensor) -> torch.Tensor:
        """r(x) = tanh(W_r norm(x) / d): (B, T, d) -> (B, T, K)."""
        routed = (self.router_norm(x) * self.router_input_scale) @ self.modality_router.T
        return torch.tanh(routed.float()).type_as(x)

    def predict(self, x: torch.Tensor, active: int) -> torch.Tensor:
        r = self.modalities(x[:, :, active])  # (B, T, K)
        p = (r @ self._clip(self.prediction_coefs).T).unflatten(-1, (self.blocks, self.blocks))
        return x + torch.einsum("btim,btmd->btid", p.type_as(x), x)  # (B, T, K, d)

    def correct(self, xhat: torch.Tensor, y: torch.Tensor, active: int) -> torch.Tensor:
        innovation = y - xhat[:, :, active]  # (B, T, d)
        gains = 1.0 + self.modalities(y) @ self._clip(self.correction_coefs).T  # (B, T, K)
        return xhat + gains[..., None] * innovation[:, :, None, :]  # (B, T, K, d)

    def flops_per_token(self, d_model: int) -> int:
        k = self.blocks
        router = 4 * d_model + 2 * d_model * k  # norm + projection, once per step
        predict = router + 2 * k * k * k + 2 * k * k * d_model
        correct = router + 2 * k * k + d_model + 2 * k * d_model
        return predict + correct
