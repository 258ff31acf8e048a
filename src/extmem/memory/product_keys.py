"""Product-key lookup (Lample et al. 2019, "Large Memory Layers with Product Keys").

A query q = norm(W_q h) per head is split into halves (q1, q2); each half is scored against its
own table of n sub-keys. The top-k of each half gives k*k candidate pairs whose scores are sums,
so they contain the exact top-k over all n^2 slots. Slot index = i1 * n + i2, weights = softmax
over the k best scores. Cost per token ~ H * n * key_dim instead of H * n^2 * key_dim / 2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from extmem.memory.config import ProductKeyConfig
from extmem.memory.pair_topk import best_pairs
from extmem.memory.score_topk import score_topk


def candidate_positions(k: int) -> tuple[list[int], list[int]]:
    """The pairs (i, j), 0 <= i, j < k, with (i+1)(j+1) <= k (Lample et al. 2019's candidates,
    pruned as in `ProductKeyLookup.search`), row-major: ([i...], [j...]), about k ln k each."""
    first = [i for i in range(k) for _ in range(k // (i + 1))]
    second = [j for i in range(k) for j in range(k // (i + 1))]
    return first, second


class MaskedBatchNorm(nn.Module):
    """BatchNorm over the feature dim that ignores padded positions when computing statistics.

    Lample found BatchNorm on queries best; in a padded batch the plain version would mix
    padding into the statistics. (It still shares statistics across positions of a batch,
    which a causal LM can exploit: LayerNorm is the default for that reason.)
    """

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        # x: (B, T, F); valid: (B, T) bool or None (all valid)
        if self.training:
            rows = x.reshape(-1, x.shape[-1]) if valid is None else x[valid]  # (n, F)
            mean = rows.mean(0)
            var = rows.var(0, unbiased=False)
            with torch.no_grad():
                unbiased = var * rows.shape[0] / max(rows.shape[0] - 1, 1)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(unbiased, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class HeadLayerNorm(nn.Module):
    """LayerNorm of each head's query on its own: statistics over each head's `key_dim`
    features, then a gain and bias per feature of all heads (shaped as nn.LayerNorm(heads *
    key_dim)'s, so with one head it is that LayerNorm, state dict included). lucidrains'
    product-key-memory normalises per head too (one LayerNorm shared by heads and halves)."""

    def __init__(self, heads: int, key_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.heads, self.key_dim, self.eps = heads, key_dim, eps
        self.weight = nn.Parameter(torch.ones(heads * key_dim))
        self.bias = nn.Parameter(torch.zeros(heads * key_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., H * key_dim) -> same shape, each head's chunk normalised on its own
        per_head = x.unflatten(-1, (self.heads, self.key_dim))  # (..., H, key_dim)
        normed = F.layer_norm(per_head, (self.key_dim,), eps=self.eps).flatten(-2)
        return normed * self.weight + self.bias


class ProductKeyLookup(nn.Module):
    """Maps hidden states (B, T, d) to slot indices and weights, each (B, T, H, k)."""

    def __init__(self, cfg: ProductKeyConfig, d_model: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_slots = cfg.num_slots
        self.reads_per_token = cfg.heads * cfg.topk
        half = cfg.key_dim // 2
        self.query = nn.Linear(d_model, cfg.heads * cfg.key_dim)
        if cfg.query_norm == "layernorm":
            self.query_norm: nn.Module | None = nn.LayerNorm(cfg.heads * cfg.key_dim)
        elif cfg.query_norm == "layernorm_per_head":
            self.query_norm = HeadLayerNorm(cfg.heads, cfg.key_dim)
        elif cfg.query_norm == "batchnorm":
            self.query_norm = MaskedBatchNorm(cfg.heads * cfg.key_dim)
        else:
            self.query_norm = None
        # sub-keys: (H, 2, n, half), uniform init as in XLM's HashingMemory
        bound = 1.0 / math.sqrt(half)
        self.sub_keys = nn.Parameter(torch.empty(cfg.heads, 2, cfg.n_keys, half).uniform_(-bound, bound))

    def queries(self, h: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, d) -> normalised queries (B, T, H, key_dim)."""
        cfg = self.cfg
        h = F.dropout(h, cfg.input_dropout, self.training)
        q = self.query(h)  # (B, T, H * key_dim)
        if isinstance(self.query_norm, MaskedBatchNorm):
            valid = None if padding_mask is None else ~padding_mask
            q = self.query_norm(q, valid)
        elif self.query_norm is not None:
            q = self.query_norm(q)
        q = F.dropout(q, cfg.query_dropout, self.training)
        return q.view(*h.shape[:-1], cfg.heads, cfg.key_dim)

    def search(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-k over n^2 slots from queries (..., H, key_dim) -> scores, indices (..., H, k).

        Fast path (docs/performance.md): one batched matmul scores both halves of every head
        at once, one top-k call takes the best k sub-keys of all 2H (head, half) rows, and the
        k*k candidate pairs are pruned to the ~k ln k pairs (i, j) with (i+1)(j+1) <= k before
        the final top-k: the per-half lists are sorted, so pair (i, j) is beaten by the
        (i+1)(j+1) - 1 pairs (i' <= i, j' <= j) and cannot be in the top k otherwise.
        Same scores and slots as `search_reference` (up to the order of exact ties).
        """
        cfg = self.cfg
        k, n, heads, half = cfg.topk, cfg.n_keys, cfg.heads, cfg.key_dim // 2
        lead = q.shape[:-2]
        qs = q.reshape(-1, 2 * heads, half).transpose(0, 1)  # (2H, M, half), (head, half) rows
        keys = self.sub_keys.reshape(2 * heads, n, half)  # (2H, n, half)
        top, idx = score_topk(qs, keys, k)  # (2H, M, k) x 2, sparse backward
        top, idx = top.unflatten(0, (heads, 2)), idx.unflatten(0, (heads, 2))  # (H, 2, M, k)
        first, second = self._candidate_pairs(k, q.device)  # (C,) each
        pos1, pos2 = best_pairs(top[:, 0], top[:, 1], first, second, k)  # (H, M, k) each
        best = top[:, 0].gather(-1, pos1) + top[:, 1].gather(-1, pos2)  # (H, M, k), autograd
        rows = idx[:, 0].gather(-1, pos1)  # (H, M, k)
        cols = idx[:, 1].gather(-1, pos2)  # (H, M, k)
        slots = rows * n + cols
        return (best.transpose(0, 1).reshape(*lead, heads, k),
                slots.transpose(0, 1).reshape(*lead, heads, k))

    def _candidate_pairs(self, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (i, j) in the two sorted top-k lists with (i+1)(j+1) <= k: (C,) each, in
        row-major order. Built from Python ints (no data-dependent `nonzero`), so that
        `torch.compile` sees constants; eager calls reuse the tensors of the first call."""
        if torch.compiler.is_compiling():  # no module-attribute side effect in a traced graph
            first, second = candidate_positions(k)
            return (torch.tensor(first, dtype=torch.long, device=device),
                    torch.tensor(second, dtype=torch.long, device=device))
        cached = getattr(self, "_pairs", None)
        if cached is None or cached[0].device != device:
            first, second = candidate_positions(k)
            self._pairs = cached = (torch.tensor(first, dtype=torch.long, device=device),
                                    torch.tensor(second, dtype=torch.long, device=device))
        return cached

    def search_reference(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The straightforward search (per-half einsum, all k*k pairs): tests compare to it."""
        cfg = self.cfg
        k, n, half = cfg.topk, cfg.n_keys, cfg.key_dim // 2
        q1, q2 = q[..., :half], q[..., half:]  # (..., H, half) each
        scores1 = torch.einsum("...hd,hnd->...hn", q1, self.sub_keys[:, 0])  # (..., H, n)
        scores2 = torch.einsum("...hd,hnd->...hn", q2, self.sub_keys[:, 1])  # (..., H, n)
        top1, idx1 = scores1.topk(k, dim=-1)  # (..., H, k)
        top2, idx2 = scores2.topk(k, dim=-1)  # (..., H, k)
        pair_scores = top1.unsqueeze(-1) + top2.unsqueeze(-2)  # (..., H, k, k)
        best, flat = pair_scores.flatten(-2).topk(k, dim=-1)  # (..., H, k)
        rows = idx1.gather(-1, flat // k)  # (..., H, k) index into the first half-keys
        cols = idx2.gather(-1, flat % k)   # (..., H, k) index into the second half-keys
        return best, rows * n + cols

    def forward(self, h: torch.Tensor, padding_mask: torch.Tensor | None = None,
                **_: object) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, d) -> indices (B, T, H, k) int64 and weights (B, T, H, k) (softmax per head)."""
        scores, indices = self.search(self.queries(h, padding_mask))
        return indices, scores.softmax(dim=-1)

    def flops_per_token(self, d_model: int) -> int:
        cfg = self.cfg
        query = 2 * d_model * cfg.heads * cfg.key_dim
        sub_key_scores = 2 * cfg.heads * cfg.n_keys * cfg.key_dim  # both halves
        candidates = cfg.heads * cfg.topk * cfg.topk  # k*k additions
        return query + sub_key_scores + candidates
