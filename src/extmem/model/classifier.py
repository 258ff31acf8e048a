"""Sequence classification on top of a pretrained `Transformer` (downstream finetuning, as in
Kim & Jung 2020, "Large Product Key Memory for Pretrained Language Models", which finetunes its PKM
models on classification tasks).

The body runs exactly as in `Transformer.forward` up to the final norm (`features`: embedding,
the layer stack via `run_blocks`, so AltUp and memories take part; a Hugging Face body,
`extmem.pretrained.PretrainedLM`, gives its base model's last hidden states), then the hidden
states are pooled
and a linear head gives class logits. Pooling:
- `mean` (default): mean over non-padding positions; works for causal and bidirectional bodies;
- `first`: the first position (finetuning prepends EOS, which plays BERT's [CLS] role in a
  bidirectional encoder; in a causal model it sees only itself, so avoid it there);
- `last`: the last non-padding position (the usual choice for decoder LMs).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from extmem.model.transformer import Transformer

Pooling = Literal["mean", "first", "last"]


def pool(hidden: torch.Tensor, padding_mask: torch.Tensor, how: Pooling) -> torch.Tensor:
    """hidden (B, T, d), padding_mask (B, T) True at padding -> (B, d)."""
    valid = (~padding_mask).to(hidden.dtype)  # (B, T)
    if how == "mean":
        return (hidden * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp_min(1.0)
    if how == "first":
        return hidden[:, 0]
    last = (valid.sum(1).long() - 1).clamp_min(0)  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class SequenceClassifier(nn.Module):
    """Token ids (B, T) -> class logits (B, C) from a pooled pretrained body."""

    def __init__(self, body: Transformer, num_classes: int, pooling: Pooling = "mean",
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.body = body
        self.pooling = pooling
        self.dropout = dropout
        self.head = nn.Linear(body.cfg.d_model, num_classes)
        nn.init.normal_(self.head.weight, std=body.cfg.init_std)
        nn.init.zeros_(self.head.bias)

    def features(self, input_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, padding_mask (B, T) -> pooled hidden states (B, d)."""
        hidden = self.body.features(input_ids, padding_mask)  # (B, T, d)
        return pool(hidden, padding_mask, self.pooling)  # (B, d)

    def forward(self, input_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        pooled = F.dropout(self.features(input_ids, padding_mask), self.dropout, self.training)
        return self.head(pooled)  # (B, C)
