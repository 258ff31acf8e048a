"""Readouts: how the rows read from a table are consumed (REFERENCE.md section 3).

`add`: the weighted bag of rows, projected to the model width when d_v != d or when the
output must start at zero (zero-initialised projection: a new memory leaves the model
unchanged at step 0, seed 2's dense initialisation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from extmem.memory.table import ValueTable


class AddReadout(nn.Module):
    def __init__(self, d_model: int, value_dim: int, value_dropout: float,
                 zero_init_output: bool) -> None:
        super().__init__()
        self.value_dropout = value_dropout
        self.out_proj: nn.Linear | None = None
        if value_dim != d_model or zero_init_output:
            self.out_proj = nn.Linear(value_dim, d_model, bias=False)
            if zero_init_output:
                nn.init.zeros_(self.out_proj.weight)

    def forward(self, h: torch.Tensor, table: ValueTable, indices: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
        """h (B, T, d); indices, weights (B, T, H, k) -> (B, T, d)."""
        out = table.read(indices, weights)  # (B, T, d_v)
        out = F.dropout(out, self.value_dropout, self.training)
        return out if self.out_proj is None else self.out_proj(out)

    def flops_per_token(self, reads_per_token: int, value_dim: int, d_model: int) -> int:
        bag = 2 * reads_per_token * value_dim
        return bag + (0 if self.out_proj is None else 2 * value_dim * d_model)
