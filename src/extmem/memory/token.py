"""Token-id lookups (lookups "token" and "ngram", docs/design-space.md).

- `TokenLookup`: the row is the token id (a per-layer token table), or a fixed random hash of
  it into fewer rows (Hash Layers, Roller et al. 2021: the rows are then experts).
- `NgramLookup`: hashed n-grams (Engram, DeepSeek 2026; Over-Tokenized Transformers 2025). For
  each order n and hash head, the last n ids are multiplied by distinct random odd constants and
  XORed, then taken modulo a distinct prime; each (order, head) owns a segment of the table.
  Positions before the sequence start and padded positions (`padding_mask`, and in cached
  decoding the padded past ones, `past_padding`) use a padding id no token has, so a left-padded
  row hashes like its unpadded sequence. No parameters; causal by construction. During cached
  decoding the ids of earlier steps come in as `past_ids`.
Both return indices and weights (B, T, H, 1).
"""

from __future__ import annotations

import torch
from torch import nn

from extmem.memory.config import NgramLookupConfig, TokenLookupConfig

_MASK_62 = (1 << 62) - 1  # keep hashed products positive int64


def _odd_constants(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 1 << 31, (count,), generator=generator, dtype=torch.int64) * 2 + 1


def _primes_below(limit: int, count: int) -> list[int]:
    """The `count` largest primes <= limit (distinct moduli for the hash heads)."""
    primes, n = [], limit
    while len(primes) < count and n >= 2:
        if all(n % p for p in range(2, int(n ** 0.5) + 1)):
            primes.append(n)
        n -= 1
    if len(primes) < count:
        raise ValueError(f"not enough primes below {limit}")
    return primes


class TokenLookup(nn.Module):
    def __init__(self, cfg: TokenLookupConfig, vocab_size: int) -> None:
        super().__init__()
        self.hashed = bool(cfg.rows) and cfg.rows != vocab_size
        self.num_slots = cfg.rows or vocab_size
        self.reads_per_token = 1
        self.register_buffer("multiplier", _odd_constants(1, cfg.seed))

    def row_ids(self, input_ids: torch.Tensor, past_ids: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None,
                past_padding: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) -> table rows (B, T, 1); the ids only (memory.prefetch)."""
        ids = input_ids
        if self.hashed:
            ids = ((ids * self.multiplier) & _MASK_62) % self.num_slots
        return ids[..., None]

    def forward(self, h: torch.Tensor, input_ids: torch.Tensor | None = None,
                **_: object) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids (B, T) -> indices, weights (B, T, 1, 1)."""
        if input_ids is None:
            raise ValueError("the token lookup needs input_ids")
        indices = self.row_ids(input_ids)[..., None]  # (B, T, 1, 1)
        return indices, torch.ones(indices.shape, dtype=h.dtype, device=h.device)

    def flops_per_token(self, d_model: int) -> int:
        return 0


class NgramLookup(nn.Module):
    def __init__(self, cfg: NgramLookupConfig, vocab_size: int) -> None:
        super().__init__()
        self.orders = list(cfg.orders)
        self.heads = cfg.heads
        self.pad_id = vocab_size  # an id no real token has
        self.num_slots = cfg.num_slots
        self.reads_per_token = len(self.orders) * cfg.heads
        segment = cfg.rows // self.reads_per_token
        primes = _primes_below(segment, self.reads_per_token)
        # one (order, head) pair per hash: multipliers for each of the n shifted ids
        max_order = max(self.orders)
        self.register_buffer("multipliers", _odd_constants(
            self.reads_per_token * max_order, cfg.seed).view(self.reads_per_token, max_order))
        self.register_buffer("primes", torch.tensor(primes, dtype=torch.int64))
        self.register_buffer("offsets", torch.arange(self.reads_per_token, dtype=torch.int64) * segment)

    def ngram_ids(self, input_ids: torch.Tensor, past_ids: torch.Tensor | None = None,
                  padding_mask: torch.Tensor | None = None,
                  past_padding: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T), past_ids (B, P) earlier ids, padding_mask (B, T) and past_padding
        (B, P) True at padding -> row ids (B, T, orders * heads). Padding reads as the
        sequence start (the pad id), whatever ids it holds."""
        if padding_mask is not None:
            input_ids = input_ids.masked_fill(padding_mask, self.pad_id)
        context = max(self.orders) - 1
        b, t = input_ids.shape
        history = input_ids.new_full((b, context), self.pad_id)  # (B, N-1)
        if past_ids is not None and past_ids.shape[1]:
            recent = past_ids[:, -context:]  # (B, <= N-1)
            if past_padding is not None:  # a left-padded prompt's padding: the start
                recent = recent.masked_fill(past_padding[:, -context:], self.pad_id)
            history[:, context - recent.shape[1]:] = recent
        ids = torch.cat([history, input_ids], dim=1)  # (B, N-1 + T)
        # shifted[j] = id at position t - j for every t: (max_order, B, T)
        shifted = torch.stack([ids[:, context - j: context - j + t] for j in range(context + 1)])
        columns = []
        for o, order in enumerate(self.orders):
            for head in range(self.heads):
                pair = o * self.heads + head
                mixed = torch.zeros_like(input_ids)
                for j in range(order):
                    mixed = mixed ^ ((shifted[j] * self.multipliers[pair, j]) & _MASK_62)
                columns.append(mixed % self.primes[pair] + self.offsets[pair])
        return torch.stack(columns, dim=-1)  # (B, T, orders * heads)

    def row_ids(self, input_ids: torch.Tensor, past_ids: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None,
                past_padding: torch.Tensor | None = None) -> torch.Tensor:
        """The rows `forward` reads, from the ids only (memory.prefetch): (B, T, H). Padding
        reads as the sequence start (`ngram_ids`)."""
        return self.ngram_ids(input_ids, past_ids, padding_mask, past_padding)

    def forward(self, h: torch.Tensor, input_ids: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None, past_ids: torch.Tensor | None = None,
                past_padding: torch.Tensor | None = None,
                **_: object) -> tuple[torch.Tensor, torch.Tensor]:
        """-> indices, weights (B, T, orders * heads, 1); rows are averaged."""
        if input_ids is None:
            raise ValueError("the n-gram lookup needs input_ids")
        indices = self.row_ids(input_ids, past_ids, padding_mask,
                               past_padding)[..., None]  # (B, T, H, 1)
        weights = torch.full(indices.shape, 1.0 / self.reads_per_token, dtype=h.dtype,
                             device=h.device)
        return indices, weights

    def flops_per_token(self, d_model: int) -> int:
        # integer multiply, mask, XOR per shifted id, and one modulo per hash
        return sum(3 * order + 1 for order in self.orders) * self.heads
