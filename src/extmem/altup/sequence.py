"""Sequence-AltUp: the layer runs on one position of every K, the others are predicted and
corrected (Baykal et al. 2023, "Alternating Updates for Efficient Transformers", section
"Sequence-AltUp").

At layer l the computed positions are p = o, o + K, o + 2K, ... with o = l mod K (`alternating`,
so every position is computed at some layer) or o = 0 (`same`). The layer (attention, FFN,
memories) runs on that subsequence alone, so attention and FFN cost 1/K. Every other position
i >= o takes the nearest computed position a <= i at distance r = i - a (1 <= r < K):

    predict  xhat_i = s_r x_i + t_r x_a
    correct  x_i   <- xhat_i + g_r (L(x_a) - x_a)

with scalars (s_r, t_r, g_r) per layer and distance, initialised to (1, 0, 1): each position
receives its computed neighbour's update. Positions i < o have no computed position before them
and pass unchanged, so the model stays strictly causal. The layer sees the subsequence's own
positions 0, 1, 2, ... (rotary distances shrink by K) and the token ids of the computed
positions (a hashed n-gram memory would hash n-grams of those).

With `skipped = "pass"` the skipped positions keep their value (plain token dropping at the
same kept fraction: the baseline Sequence-AltUp is compared with, claim 8 in docs/results.md).

Cached decoding is refused: a decoding step would need each layer's last computed position and
its update across steps, which `DecodeCache` does not hold. Generate with `mode = "blocks"`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from extmem.altup.config import AltUpConfig
from extmem.errors import ConfigError

if TYPE_CHECKING:
    from extmem.decode_cache import DecodeCache

_IDENTITY = (1.0, 0.0)  # (s_r, t_r) of the dense model: keep x_i, ignore x_a


class SequenceAltUp(nn.Module):
    """Runs a model's blocks on one of every K positions: (B, T, d) -> (B, T, d)."""

    def __init__(self, cfg: AltUpConfig, d_model: int, n_layers: int) -> None:
        super().__init__()
        self.cfg, self.d_model, self.n_layers = cfg, d_model, n_layers
        shape = (n_layers, cfg.k - 1, 2)
        offsets = torch.zeros(shape)
        if cfg.init == "random":  # (s_r, t_r) drawn from N(0, 1/2)
            offsets = torch.randn(shape) * 0.5 ** 0.5 - torch.tensor(_IDENTITY)
        self.predictor = nn.Parameter(offsets)  # (s_r, t_r) - (1, 0) per layer and distance
        self.gains = nn.Parameter(torch.zeros(n_layers, cfg.k - 1))  # g_r - 1

    @property
    def layer_share(self) -> float:
        """Fraction of the positions that run the layers."""
        return 1.0 / self.cfg.k

    def offset(self, layer: int) -> int:
        return layer % self.cfg.k if self.cfg.active == "alternating" else 0

    def step(self, x: torch.Tensor, layer: int, block: nn.Module, input_ids: torch.Tensor,
             padding_mask: torch.Tensor | None) -> torch.Tensor:
        """One layer on x (B, T, d): run `block` on the computed positions, predict / correct
        the rest."""
        k, o, t = self.cfg.k, self.offset(layer), x.shape[1]
        if o >= t:
            return x
        computed = x[:, o::k]  # (B, T_c, d)
        mask = padding_mask[:, o::k] if padding_mask is not None else None
        y = block(computed, input_ids[:, o::k], mask, None)  # (B, T_c, d)
        position = torch.arange(o, t, device=x.device)  # positions i >= o
        slot, distance = (position - o) // k, (position - o) % k  # (T - o,)
        row = (distance - 1).clamp_min(0)  # distance 0 is the computed position itself
        coefs = self.predictor[layer, row] + torch.tensor(_IDENTITY, device=x.device)  # (T-o, 2)
        gains = 1.0 + self.gains[layer, row]  # (T - o,)
        anchor = computed[:, slot]  # (B, T - o, d)
        if self.cfg.skipped == "pass":  # plain token dropping: skipped positions keep x_i
            corrected = x[:, o:]
        else:
            xhat = coefs[:, :1] * x[:, o:] + coefs[:, 1:] * anchor
            corrected = xhat + gains[:, None] * (y - computed)[:, slot]
        updated = torch.where((distance == 0)[:, None], y[:, slot], corrected)  # (B, T - o, d)
        return torch.cat([x[:, :o], updated], dim=1)

    def forward(self, blocks: nn.ModuleList, x: torch.Tensor, input_ids: torch.Tensor,
                padding_mask: torch.Tensor | None, cache: DecodeCache | None) -> torch.Tensor:
        if cache is not None:
            raise ConfigError("model.altup.mode: 'sequence' does not support cached decoding "
                              "(DecodeCache, used by generate); use mode = 'blocks' to generate")
        for layer, block in enumerate(blocks):
            x = self.step(x, layer, block, input_ids, padding_mask)
        return x

    def flops_per_token(self) -> int:
        """Predict (3 d) and correct (3 d) at the K-1 of K positions the layers skip (none
        when they are passed through)."""
        if self.cfg.skipped == "pass":
            return 0
        k = self.cfg.k
        return int(self.n_layers * 6 * self.d_model * (k - 1) / k)
