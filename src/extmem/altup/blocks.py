"""AltUp over the layer stack: K blocks per token, the ordinary layer on one of them.

Alternating Updates (Baykal et al. 2023, "Alternating Updates for Efficient Transformers").
Each layer predicts every block from all blocks, runs the unchanged width-d layer (attention,
FFN, memories) on the active block `j = l mod K` (`alternating`) or `j = 0` (`same`) and
corrects every block with the layer's innovation. Every step is per position, so cached
decoding works unchanged: each layer keeps the keys / values of its active block in the
ordinary `DecodeCache`.

Memory blocks (`extra_blocks`) sit after the K computed blocks in the same stream and are where
a memory's `concat` readout places its rows (`write_extra`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from extmem.altup.coefficients import RouterCoefficients, ScalarCoefficients
from extmem.altup.config import AltUpConfig
from extmem.altup.streams import build_streams

if TYPE_CHECKING:
    from extmem.decode_cache import DecodeCache


class BlockAltUp(nn.Module):
    """Runs a model's blocks on a K-block stream: embedding (B, T, W) -> (B, T, W)."""

    def __init__(self, cfg: AltUpConfig, d_model: int, n_layers: int, norm_eps: float) -> None:
        super().__init__()
        self.cfg, self.d_model = cfg, d_model
        self.streams = build_streams(cfg, d_model)
        random = cfg.init == "random"
        blocks = cfg.total_blocks
        self.coefficients = nn.ModuleList(
            ScalarCoefficients(blocks, random) if cfg.coefficients == "scalar"
            else RouterCoefficients(blocks, d_model, cfg.coef_clip, norm_eps, random)
            for _ in range(n_layers))

    @property
    def layer_share(self) -> float:
        """Fraction of the positions that run the layers: all of them (Sequence-AltUp: 1/K)."""
        return 1.0

    def active_block(self, layer: int) -> int:
        return layer % self.cfg.k if self.cfg.active == "alternating" else 0

    def step(self, stream: torch.Tensor, layer: int, block: nn.Module, input_ids: torch.Tensor,
             padding_mask: torch.Tensor | None, cache: DecodeCache | None) -> torch.Tensor:
        """One layer: predict, run `block` on the active block, correct. (B, T, K, d) in/out."""
        coefficients, j = self.coefficients[layer], self.active_block(layer)
        xhat = coefficients.predict(stream, j)  # (B, T, K, d)
        y = block(xhat[:, :, j], input_ids, padding_mask, cache)  # (B, T, d)
        stream = coefficients.correct(xhat, y, j)
        for memory in getattr(block, "memories", ()):  # concat memories widen the token
            rows = memory.pop_altup_rows()  # (B, T, n * d) or None
            if rows is not None:
                stream = self.write_extra(stream, rows, memory.altup_first_block)
        return stream

    def write_extra(self, stream: torch.Tensor, rows: torch.Tensor, first: int = 0) -> torch.Tensor:
        """Add rows (B, T, n*d) into memory blocks first..first+n-1 of stream (B, T, K_total, d).

        The hook for a memory's `concat` readout: the row widens the token instead of being
        projected back to d. The next layer's predictor mixes it into the computed blocks.
        """
        n = rows.shape[-1] // self.d_model
        if rows.shape[-1] != n * self.d_model or not 0 <= first <= self.cfg.extra_blocks - n:
            raise ValueError(f"write_extra: rows of width {rows.shape[-1]} at memory block "
                             f"{first} do not fit {self.cfg.extra_blocks} memory blocks of width "
                             f"{self.d_model} (model.altup.extra_blocks)")
        start, end = self.cfg.k + first, self.cfg.k + first + n
        written = stream[:, :, start:end] + rows.unflatten(-1, (n, self.d_model))  # (B, T, n, d)
        return torch.cat([stream[:, :, :start], written, stream[:, :, end:]], dim=2)

    def forward(self, blocks: nn.ModuleList, x: torch.Tensor, input_ids: torch.Tensor,
                padding_mask: torch.Tensor | None, cache: DecodeCache | None) -> torch.Tensor:
        stream = self.streams.expand(x)  # (B, T, K_total, d)
        for layer, block in enumerate(blocks):
            stream = self.step(stream, layer, block, input_ids, padding_mask, cache)
        return self.streams.collapse(stream)  # (B, T, W)

    def flops_per_token(self) -> int:
        """Predict / correct of every layer plus expand / collapse (the layers not included)."""
        per_layer = sum(c.flops_per_token(self.d_model) for c in self.coefficients)
        return per_layer + self.streams.flops_per_token()
