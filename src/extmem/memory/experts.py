"""Table rows as expert networks (readout "experts", docs/design-space.md).

Row i holds the weights of expert e_i(h) = W_out,i act(W_in,i h) (d -> hidden -> d), flattened
as [W_in (hidden x d) ; W_out (d x hidden)]. The output is sum_j w_j e_{idx_j}(h). With a token
lookup this is Hash Layers (Roller 2021), with a router a top-k MoE (Switch), with LSH an
LSH-routed MoE (Baykal 2022), with product keys PEER (He 2024: hidden = 1, single-neuron experts
over up to a million rows).

Computed batched, never per token: with few experts, tokens are grouped by expert and each
expert runs once on its tokens (a loop over experts); with many experts (PEER), the chosen
experts' weights are gathered per token and applied with one einsum. With `sparse_updates`
the table's gradient holds only the experts used in the step (`extmem.memory.sparse`), for
the lazy optimizers, instead of a table-sized dense gradient and an AdamW pass over every
expert.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from extmem.memory.config import ExpertsConfig
from extmem.memory.sparse import dense_gather, sparse_gather
from extmem.memory.table import ValueTable

GROUPED_MAX_EXPERTS = 256  # above this, gather weights per token (PEER-style)
_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}


def expert_row_width(d_model: int, cfg: ExpertsConfig) -> int:
    return 2 * d_model * cfg.hidden


def init_expert_table(table: ValueTable, d_model: int, hidden: int, zero_output: bool) -> None:
    """W_in ~ N(0, 1/d), W_out ~ N(0, 1/hidden) (or zero for a no-op start)."""
    with torch.no_grad():
        w_in = table.weight[:, : hidden * d_model]
        w_out = table.weight[:, hidden * d_model:]
        w_in.normal_(0.0, d_model ** -0.5)
        if zero_output:
            w_out.zero_()
        else:
            w_out.normal_(0.0, hidden ** -0.5)


def _rows(table: ValueTable, idx: torch.Tensor) -> torch.Tensor:
    """The expert rows `idx` (...) -> (..., D); with `sparse_updates` their gradient is
    row-sparse (only the experts used this step), as a value table's bag is; else dense,
    summed by `index_add_` (`dense_gather`)."""
    if not (table.weight.requires_grad and torch.is_grad_enabled()):
        return table.weight[idx]
    return (sparse_gather if table.sparse else dense_gather)(table.weight, idx)


class ExpertsReadout(nn.Module):
    def __init__(self, d_model: int, cfg: ExpertsConfig, value_dropout: float) -> None:
        super().__init__()
        self.d_model, self.hidden = d_model, cfg.hidden
        self.act = _ACTIVATIONS[cfg.activation]
        self.value_dropout = value_dropout

    def split(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rows (..., 2 * d * hidden) -> W_in (..., hidden, d), W_out (..., d, hidden)."""
        d, hid = self.d_model, self.hidden
        return (rows[..., : hid * d].unflatten(-1, (hid, d)),
                rows[..., hid * d:].unflatten(-1, (d, hid)))

    def forward(self, h: torch.Tensor, table: ValueTable, indices: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
        """h (B, T, d); indices, weights (B, T, H, k) -> (B, T, d)."""
        flat_h = h.reshape(-1, self.d_model)  # (n, d)
        flat_idx = indices.reshape(flat_h.shape[0], -1)  # (n, R)
        flat_w = weights.reshape(flat_idx.shape).to(h.dtype)  # (n, R)
        if table.num_rows <= GROUPED_MAX_EXPERTS:
            out = self._grouped(flat_h, table, flat_idx, flat_w)
        else:
            out = self._gathered(flat_h, table, flat_idx, flat_w)
        return F.dropout(out, self.value_dropout, self.training).view_as(h)

    def _gathered(self, h: torch.Tensor, table: ValueTable, idx: torch.Tensor,
                  w: torch.Tensor) -> torch.Tensor:
        w_in, w_out = self.split(_rows(table, idx).to(h.dtype))  # (n, R, hid, d), (n, R, d, hid)
        hidden = self.act(torch.einsum("nrkd,nd->nrk", w_in, h))  # (n, R, hid)
        return torch.einsum("nrdk,nrk,nr->nd", w_out, hidden, w)  # (n, d)

    def _grouped(self, h: torch.Tensor, table: ValueTable, idx: torch.Tensor,
                 w: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(h)  # (n, d)
        token = torch.arange(h.shape[0], device=h.device)[:, None].expand_as(idx)  # (n, R)
        flat_expert, flat_token, flat_w = idx.reshape(-1), token.reshape(-1), w.reshape(-1)
        order = flat_expert.argsort()
        flat_expert, flat_token, flat_w = flat_expert[order], flat_token[order], flat_w[order]
        experts, counts = torch.unique_consecutive(flat_expert, return_counts=True)
        expert_rows = _rows(table, experts).to(h.dtype)  # (U, 2 * d * hid): the experts used
        start = 0
        for i, count in enumerate(counts.tolist()):
            rows = slice(start, start + count)
            start += count
            w_in, w_out = self.split(expert_rows[i])  # (hid, d), (d, hid)
            x = h[flat_token[rows]]  # (c, d)
            y = self.act(x @ w_in.T) @ w_out.T  # (c, d)
            out.index_add_(0, flat_token[rows], y * flat_w[rows, None])
        return out

    def flops_per_token(self, reads_per_token: int, value_dim: int, d_model: int) -> int:
        return reads_per_token * (4 * d_model * self.hidden + d_model)
