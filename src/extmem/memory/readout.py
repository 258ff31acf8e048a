"""Readouts: how the rows read from a table are consumed (docs/design-space.md).

Every readout takes h (B, T, d), the table and the lookup's indices/weights (B, T, H, k) and
returns the update (B, T, d). `zero_init_output` zeroes the last layer of the readout so a new
memory leaves the model unchanged at step 0 (the dense initialisation of Kim & Jung 2020, "Large
Product Key Memory for Pretrained Language Models").

- add: the weighted bag of rows, projected to d when d_v != d (or for zero init).
- gated: Gemma 3n per-layer embeddings: act(W_g h) * bag, then W_up, then RMSNorm.
- memory_plus: Memory Layers at Scale (Meta 2024): W_2(bag * silu(W_1 h)).
- concat: [h ; bag] projected back to d (costs (d + d_v) * d per token). AltUp can carry the
  wider token instead (`concat_into = "altup"`, `extmem.altup`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from extmem.layers import RMSNorm
from extmem.memory.table import ValueTable


class _Readout(nn.Module):
    def __init__(self, value_dropout: float) -> None:
        super().__init__()
        self.value_dropout = value_dropout

    def bag(self, table: ValueTable, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The weighted sum of rows (B, T, d_v), with value dropout."""
        return F.dropout(table.read(indices, weights), self.value_dropout, self.training)


class AddReadout(_Readout):
    def __init__(self, d_model: int, value_dim: int, value_dropout: float,
                 zero_init_output: bool) -> None:
        super().__init__(value_dropout)
        self.out_proj: nn.Linear | None = None
        if value_dim != d_model or zero_init_output:
            self.out_proj = nn.Linear(value_dim, d_model, bias=False)
            if zero_init_output:
                nn.init.zeros_(self.out_proj.weight)

    def forward(self, h: torch.Tensor, table: ValueTable, indices: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
        out = self.bag(table, indices, weights)  # (B, T, d_v)
        return out if self.out_proj is None else self.out_proj(out)

    def flops_per_token(self, reads_per_token: int, value_dim: int, d_model: int) -> int:
        bag = 2 * reads_per_token * value_dim
        return bag + (0 if self.out_proj is None else 2 * value_dim * d_model)


class GatedReadout(_Readout):
    """Gemma 3n per-layer embedding: norm(W_up(gelu(W_g h) * bag))."""

    def __init__(self, d_model: int, value_dim: int, value_dropout: float,
                 zero_init_output: bool) -> None:
        super().__init__(value_dropout)
        self.gate = nn.Linear(d_model, value_dim, bias=False)
        self.up = nn.Linear(value_dim, d_model, bias=False)
        self.norm = RMSNorm(d_model)
        if zero_init_output:
            nn.init.zeros_(self.norm.weight)

    def forward(self, h: torch.Tensor, table: ValueTable, indices: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
        gate = F.gelu(self.gate(h), approximate="tanh")  # (B, T, d_v)
        return self.norm(self.up(gate * self.bag(table, indices, weights)))

    def flops_per_token(self, reads_per_token: int, value_dim: int, d_model: int) -> int:
        return 2 * reads_per_token * value_dim + 4 * d_model * value_dim + 4 * d_model


class MemoryPlusReadout(_Readout):
    """Memory+ (Meta 2024): W_2(bag * silu(W_1 h))."""

    def __init__(self, d_model: int, value_dim: int, value_dropout: float,
                 zero_init_output: bool) -> None:
        super().__init__(value_dropout)
        self.w1 = nn.Linear(d_model, value_dim, bias=False)
        self.w2 = nn.Linear(value_dim, d_model, bias=False)
        if zero_init_output:
            nn.init.zeros_(self.w2.weight)

    def forward(self, h: torch.Tensor, table: ValueTable, indices: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
        return self.w2(self.bag(table, indices, weights) * F.silu(self.w1(h)))

    def flops_per_token(self, reads_per_token: int, value_dim: int, d_model: int) -> int:
        return 2 * reads_per_token * value_dim + 4 * d_model * value_dim + value_dim


class ConcatReadout(_Readout):
    """[h ; bag] -> W_c -> d: the memory row widens the token, projected back.

    With `into_altup`, nothing is projected: the rows are left in `pending_rows` (B, T, d_v)
    for AltUp to write into its memory blocks after the layer, and the readout adds nothing
    to the layer's own update (forward returns None).
    """

    def __init__(self, d_model: int, value_dim: int, value_dropout: float,
                 zero_init_output: bool, into_altup: bool = False) -> None:
        super().__init__(value_dropout)
        self.into_altup = into_altup
        self.pending_rows: torch.Tensor | None = None
        self.proj: nn.Linear | None = None
        if not into_altup:
            self.proj = nn.Linear(d_model + value_dim, d_model, bias=False)
            if zero_init_output:
                nn.init.zeros_(self.proj.weight)

    def forward(self, h: torch.Tensor, table: ValueTable, indices: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor | None:
        bag = self.bag(table, indices, weights).to(h.dtype)  # (B, T, d_v)
        if self.proj is None:
            self.pending_rows = bag
            return None
        return self.proj(torch.cat([h, bag], dim=-1))  # (B, T, d)

    def flops_per_token(self, reads_per_token: int, value_dim: int, d_model: int) -> int:
        projection = 0 if self.proj is None else 2 * (d_model + value_dim) * d_model
        return 2 * reads_per_token * value_dim + projection
