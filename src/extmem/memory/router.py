"""Learned softmax routing (lookup "router", docs/design-space.md; Switch Transformer, Fedus 2021).

logits = W_r h over N entries; top-k; weights = the softmax probabilities of the chosen
entries, so the router learns through the weights. The Switch load-balancing loss
`N * sum_i f_i * P_i` (f_i: fraction of routed slots going to entry i, P_i: mean router
probability of i) and the router z-loss `mean(logsumexp(logits)^2)` are kept on the module
after each training forward (`aux_loss`, already multiplied by their coefficients), for the
trainer to add to the loss. Cost grows linearly with N: why product keys exist.
"""

from __future__ import annotations

import torch
from torch import nn

from extmem.memory.config import RouterLookupConfig


def switch_balance_loss(probs: torch.Tensor, indices: torch.Tensor, entries: int) -> torch.Tensor:
    """probs (n, N) router probabilities; indices (n, k) chosen entries -> N * sum f_i * P_i."""
    counts = torch.zeros(entries, dtype=probs.dtype, device=probs.device)
    counts.index_add_(0, indices.reshape(-1), torch.ones(indices.numel(), dtype=probs.dtype,
                                                         device=probs.device))
    fraction = counts / indices.numel()  # f_i
    mean_prob = probs.mean(0)  # P_i
    return entries * (fraction * mean_prob).sum()


class RouterLookup(nn.Module):
    def __init__(self, cfg: RouterLookupConfig, d_model: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_slots = cfg.num_slots
        self.reads_per_token = cfg.topk
        self.router = nn.Linear(d_model, cfg.entries, bias=False)
        nn.init.normal_(self.router.weight, std=d_model ** -0.5)
        self.aux_loss: torch.Tensor | None = None
        self.balance_loss: torch.Tensor | None = None

    def forward(self, h: torch.Tensor, padding_mask: torch.Tensor | None = None,
                **_: object) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, T, d) -> indices, weights (B, T, 1, k)."""
        logits = self.router(h).float()  # (B, T, N)
        probs = logits.softmax(-1)
        weights, indices = probs.topk(self.cfg.topk, dim=-1)  # (B, T, k)
        if self.training:
            keep = None if padding_mask is None else ~padding_mask
            flat_probs = probs.reshape(-1, self.cfg.entries) if keep is None else probs[keep]
            flat_idx = indices.reshape(-1, self.cfg.topk) if keep is None else indices[keep]
            self.balance_loss = switch_balance_loss(flat_probs, flat_idx, self.cfg.entries)
            aux = self.cfg.balance_coef * self.balance_loss
            if self.cfg.z_loss_coef:
                z = torch.logsumexp(logits, dim=-1)
                aux = aux + self.cfg.z_loss_coef * z.square().mean()
            self.aux_loss = aux
        return indices[..., None, :], weights.to(h.dtype)[..., None, :]

    def flops_per_token(self, d_model: int) -> int:
        return 2 * d_model * self.cfg.entries
