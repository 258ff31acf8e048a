"""SimHash lookup (lookup "lsh", docs/design-space.md; Baykal et al. 2022 on LSH-routed memory).

`heads` independent hashes, each with `bits` frozen random hyperplanes R (bits x d): the
bucket is the integer formed by the sign bits of R h. Nearby hidden states share a bucket.
No gradient flows through the bucket choice; the rows read get gradients. Each hash owns a
segment of 2**bits rows; the rows of the hashes are averaged.
"""

from __future__ import annotations

import torch
from torch import nn

from extmem.memory.config import LshLookupConfig


class LshLookup(nn.Module):
    def __init__(self, cfg: LshLookupConfig, d_model: int, layer_seed: int = 0) -> None:
        super().__init__()
        self.bits, self.heads = cfg.bits, cfg.heads
        self.buckets = 1 << cfg.bits
        self.num_slots = cfg.num_slots  # heads segments of 2**bits buckets
        self.reads_per_token = self.heads
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + layer_seed)
        # frozen hyperplanes: a buffer, not a parameter (saved with the model, never trained)
        self.register_buffer("hyperplanes", torch.randn(cfg.heads * cfg.bits, d_model,
                                                        generator=generator))
        self.register_buffer("bit_values", 2 ** torch.arange(cfg.bits, dtype=torch.int64))
        self.register_buffer("offsets", torch.arange(cfg.heads, dtype=torch.int64) * self.buckets)

    def buckets_of(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, T, d) -> bucket per hash (B, T, heads) in [0, 2**bits)."""
        projected = h.detach() @ self.hyperplanes.to(h.dtype).T  # (B, T, heads * bits)
        signs = (projected > 0).view(*h.shape[:-1], self.heads, self.bits).long()
        return (signs * self.bit_values).sum(-1)  # (B, T, heads)

    def forward(self, h: torch.Tensor, **_: object) -> tuple[torch.Tensor, torch.Tensor]:
        """-> indices, weights (B, T, heads, 1)."""
        indices = (self.buckets_of(h) + self.offsets)[..., None]  # (B, T, heads, 1)
        weights = torch.full(indices.shape, 1.0 / self.heads, dtype=h.dtype, device=h.device)
        return indices, weights

    def flops_per_token(self, d_model: int) -> int:
        return 2 * d_model * self.heads * self.bits
