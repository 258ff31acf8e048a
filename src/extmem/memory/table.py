"""Value storage: a table of N rows read as a weighted embedding bag.

Shared by every lookup (REFERENCE.md section 3, "add"): out = sum_{h,j} w_hj * V[idx_hj].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ValueTable(nn.Module):
    """N rows of width d_v; `read` gathers and sums rows weighted per (token, head, slot)."""

    def __init__(self, num_rows: int, dim: int) -> None:
        super().__init__()
        # Lample/XLM init: N(0, d_v^-1/2)
        self.weight = nn.Parameter(torch.randn(num_rows, dim) * dim ** -0.5)

    @property
    def num_rows(self) -> int:
        return self.weight.shape[0]

    def read(self, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """indices, weights (B, T, H, k) -> weighted sum of rows (B, T, d_v)."""
        lead = indices.shape[:-2]
        bags = indices.reshape(-1, indices.shape[-2] * indices.shape[-1])  # (B*T, H*k)
        out = F.embedding_bag(bags, self.weight, mode="sum",
                              per_sample_weights=weights.reshape(bags.shape).to(self.weight.dtype))
        return out.view(*lead, self.weight.shape[1])  # (B, T, d_v)
