"""Engram: conditional memory by scalable lookup (Cheng et al. 2026, "Conditional Memory via
Scalable Lookup: A New Axis of Sparsity for Large Language Models", DeepSeek, arXiv 2601.07372;
docs/design-space.md). Lookup "engram" and readout "engram" (`extmem.memory.config.EngramConfig`):

- Tokenizer compression (section 2.2): a surjective map from token ids to canonical ids that
  merges ids whose decoded text is the same after NFKC, accent stripping, lowercasing and
  whitespace collapsing / stripping (the normaliser of the paper's reference code,
  deepseek-ai/Engram engram_demo_v1.py). Each class maps to its smallest id, so the map is
  idempotent. It is a persistent buffer, built from the run's tokenizer when the model is built
  (`EngramLookup.use_tokenizer`) and saved in every checkpoint, so eval / resume / export reuse
  it; with no tokenizer (plain Python use) it is the identity.
- Multi-head hashing (section 2.2): for each order n, the last n canonical ids are multiplied by
  distinct odd constants (drawn per layer, small enough that no product overflows int64) and
  XORed; each of K heads takes the mix modulo its own prime, the size of its own table. The
  tables are segments of one `ValueTable`, so lookups return indices (B, T, n_orders * K, 1)
  like every lookup. Positions before the sequence start and padded positions (of this call,
  and in cached decoding the padded past ones, `past_padding`) use an id no token has, so a
  left-padded prompt hashes like its unpadded sequence. The ids depend on the token ids only
  (`EngramLookup.row_ids`), never on h.
- Readout (section 2.3): e = the heads' rows concatenated (or their mean); the context-aware
  gate alpha = sigmoid(RMSNorm(h) . RMSNorm(W_k e) / sqrt(d)) (with the reference code's signed
  square root of the logit), v = alpha * W_v e; then y = v + SiLU(conv(RMSNorm(v))) with a
  causal depthwise convolution (kernel 4, dilation = the largest order). The convolution mixes
  positions, so the readout takes the padding mask (padded positions feed zeros) and, during
  cached decoding, a state dict in which it keeps its last (kernel - 1) * dilation inputs.

Not built: the paper's multi-branch (mHC) integration, where the branches share the table and
W_v but each has its own W_k; this model has one residual stream.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from extmem.layers import RMSNorm
from extmem.memory.config import EngramConfig
from extmem.memory.table import ValueTable

LAYER_SEED_STRIDE = 10007  # multipliers of layer l are drawn from seed + 10007 * l (reference code)
GATE_EPS = 1e-6            # RMSNorm eps of the gate's query and key (reference code)
CONV_EPS = 1e-5            # RMSNorm eps before the convolution (reference code)
_SPACES = re.compile(r"[ \t\r\n]+")


class TokenText(Protocol):
    """What the compression needs of a tokenizer (a `tokenizers.Tokenizer` has it)."""

    def get_vocab_size(self) -> int: ...
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...
    def id_to_token(self, id: int) -> str | None: ...


def normalise_token_text(text: str) -> str:
    """NFKC, accents stripped (NFD, combining marks dropped), lowercase, runs of whitespace to
    one space, then stripped unless the text is that one space."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
    text = _SPACES.sub(" ", text.lower())
    return text if text == " " else text.strip()


def _token_key(tokenizer: TokenText, token_id: int) -> tuple[str, str]:
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    if "\ufffd" in text:  # a partial UTF-8 sequence: keep the byte-level token apart
        return "token", tokenizer.id_to_token(token_id) or str(token_id)
    return "text", normalise_token_text(text) or text


def canonical_token_map(tokenizer: TokenText, vocab_size: int) -> torch.Tensor:
    """(vocab_size,) int64: each id -> the smallest id whose decoded text normalises alike.
    Ids the tokenizer does not have (a model vocabulary larger than it) map to themselves."""
    canonical = torch.arange(vocab_size, dtype=torch.int64)
    first: dict[tuple[str, str], int] = {}
    for token_id in range(min(vocab_size, tokenizer.get_vocab_size())):
        canonical[token_id] = first.setdefault(_token_key(tokenizer, token_id), token_id)
    return canonical


def _odd_multipliers(count: int, vocab_size: int, seed: int) -> torch.Tensor:
    """`count` random odd int64 constants m with m * (vocab_size + 1) < 2**63."""
    half_bound = max(1, (2 ** 63 - 1) // (vocab_size + 1) // 2)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, half_bound, (count,), generator=generator, dtype=torch.int64) * 2 + 1


class EngramLookup(nn.Module):
    """Compressed token ids -> one row per (order, head): indices, weights (B, T, H, 1)."""

    def __init__(self, cfg: EngramConfig, vocab_size: int, layer: int = 0,
                 layer_rank: int = 0) -> None:
        super().__init__()
        self.orders, self.heads = list(cfg.orders), cfg.heads
        self.compress_tokens = cfg.compress_tokens
        self.vocab_size = vocab_size
        self.pad_id = vocab_size  # an id no token has: before the start, and at padding
        sizes = cfg.table_sizes(vocab_size, layer_rank)  # primes distinct across layers
        self.num_slots = sum(sizes)
        self.reads_per_token = len(sizes)
        self.register_buffer("canonical", torch.arange(vocab_size, dtype=torch.int64))
        self.register_buffer("multipliers", _odd_multipliers(
            max(self.orders), vocab_size, cfg.seed + LAYER_SEED_STRIDE * layer))
        primes = torch.tensor(sizes, dtype=torch.int64)
        self.register_buffer("primes", primes.view(len(self.orders), self.heads))
        offsets = torch.cumsum(primes, 0) - primes
        self.register_buffer("offsets", offsets.view(len(self.orders), self.heads))

    @torch.no_grad()
    def use_tokenizer(self, tokenizer: TokenText) -> None:
        """Build the compression map from the run's tokenizer (no-op with compress_tokens off)."""
        if self.compress_tokens:
            self.canonical.copy_(canonical_token_map(tokenizer, self.vocab_size))

    def compress(self, ids: torch.Tensor) -> torch.Tensor:
        return self.canonical[ids]

    def row_ids(self, input_ids: torch.Tensor, past_ids: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None,
                past_padding: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T), past_ids (B, P) earlier ids, padding_mask (B, T) and past_padding
        (B, P) True at padding -> table rows (B, T, n_orders * heads), order-major. Padding
        reads as the sequence start. Depends on the ids only (can run ahead)."""
        ids = self.compress(input_ids)
        if padding_mask is not None:
            ids = ids.masked_fill(padding_mask, self.pad_id)
        context = max(self.orders) - 1
        b, t = ids.shape
        history = ids.new_full((b, context), self.pad_id)  # (B, N-1)
        if past_ids is not None and past_ids.shape[1] and context:
            recent = self.compress(past_ids[:, -context:])  # (B, <= N-1)
            if past_padding is not None:  # a left-padded prompt's padding: the start
                recent = recent.masked_fill(past_padding[:, -context:], self.pad_id)
            history[:, context - recent.shape[1]:] = recent
        ids = torch.cat([history, ids], dim=1)  # (B, N-1 + T)
        # the id j positions back from each position, times its constant: (N, B, T)
        terms = torch.stack([ids[:, context - j: context - j + t] * self.multipliers[j]
                             for j in range(context + 1)])
        columns = []
        for o, order in enumerate(self.orders):
            mix = terms[0]
            for j in range(1, order):
                mix = mix ^ terms[j]
            columns.append(mix[..., None] % self.primes[o] + self.offsets[o])  # (B, T, heads)
        return torch.cat(columns, dim=-1)

    def forward(self, h: torch.Tensor, input_ids: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None, past_ids: torch.Tensor | None = None,
                past_padding: torch.Tensor | None = None,
                **_: object) -> tuple[torch.Tensor, torch.Tensor]:
        """-> indices, weights (B, T, H, 1): each head's row with weight 1 (readouts that sum
        the reads sum the heads, as product keys' heads are summed)."""
        if input_ids is None:
            raise ValueError("the engram lookup needs input_ids")
        indices = self.row_ids(input_ids, past_ids, padding_mask,
                               past_padding)[..., None]  # (B, T, H, 1)
        return indices, torch.ones(indices.shape, dtype=h.dtype, device=h.device)

    def flops_per_token(self, d_model: int) -> int:
        # one gather (compression); per order n multiplies and n - 1 XORs; per hash a modulo
        # and an offset (integer operations counted as one each)
        return 1 + sum(2 * order - 1 for order in self.orders) + 2 * self.reads_per_token


def _rms_normalise(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm without a scale (the depthwise convolution's own weights scale each channel)."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


class EngramReadout(nn.Module):
    """e -> [gate] -> W_v e -> [+ SiLU(conv(RMSNorm(.)))]: (B, T, d).

    Works after any lookup: e concatenates the H heads' weighted bags (`combine = "concat"`,
    width H * d_v) or is their mean (width d_v). `zero_init_output` zeroes W_v (weight and
    bias), so the whole output is zero at step 0.
    """

    def __init__(self, cfg: EngramConfig, d_model: int, value_dim: int, heads: int,
                 value_dropout: float, zero_init_output: bool) -> None:
        super().__init__()
        self.heads, self.value_dropout = heads, value_dropout
        self.concat = cfg.combine == "concat"
        width = heads * value_dim if self.concat else value_dim
        self.value = nn.Linear(width, d_model)  # W_v (biases as in the reference code)
        if zero_init_output:
            nn.init.zeros_(self.value.weight)
            nn.init.zeros_(self.value.bias)
        self.key = nn.Linear(width, d_model) if cfg.gate else None  # W_k
        self.key_norm = RMSNorm(d_model, GATE_EPS) if cfg.gate else None
        self.query_norm = RMSNorm(d_model, GATE_EPS) if cfg.gate else None
        self.gate_sqrt = cfg.gate_sqrt
        self.kernel, self.dilation = cfg.conv_kernel, cfg.dilation
        self.conv: nn.Parameter | None = None
        if cfg.conv:  # depthwise: one kernel per channel, as nn.Conv1d(groups=d) without bias
            self.conv = nn.Parameter(torch.empty(d_model, 1, cfg.conv_kernel))
            if cfg.conv_zero_init:
                nn.init.zeros_(self.conv)
            else:
                nn.init.kaiming_uniform_(self.conv, a=math.sqrt(5))  # nn.Conv1d's default

    @property
    def mixes_positions(self) -> bool:
        """With the convolution, Memory passes the padding mask and the decoding state."""
        return self.conv is not None

    def memory_vector(self, table: ValueTable, indices: torch.Tensor,
                      weights: torch.Tensor) -> torch.Tensor:
        """indices, weights (B, T, H, k) -> e (B, T, H * d_v) or (B, T, d_v)."""
        if indices.shape[-2] != self.heads:
            raise ValueError(f"the engram readout was built for {self.heads} heads, the lookup "
                             f"read {indices.shape[-2]}")
        if self.concat:  # each head's bag on its own, then side by side
            per_head = table.read(indices.unsqueeze(-2), weights.unsqueeze(-2))  # (B, T, H, d_v)
            e = per_head.flatten(-2)
        else:
            e = table.read(indices, weights / self.heads)  # (B, T, d_v)
        return F.dropout(e, self.value_dropout, self.training)

    def gate(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """alpha (B, T, 1) = sigmoid(RMSNorm(h) . RMSNorm(W_k e) / sqrt(d))."""
        logit = (self.query_norm(h) * self.key_norm(self.key(e))).sum(-1, keepdim=True)
        logit = logit / math.sqrt(h.shape[-1])
        if self.gate_sqrt:
            logit = logit.abs().clamp_min(1e-6).sqrt() * logit.sign()
        return torch.sigmoid(logit)

    def short_conv(self, v: torch.Tensor, padding_mask: torch.Tensor | None,
                   state: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """SiLU(causal depthwise conv(RMSNorm(v))) (B, T, d); `state["conv"]` holds the last
        (kernel - 1) * dilation inputs of earlier decoding steps (zeros before the start)."""
        x = _rms_normalise(v, CONV_EPS)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
        span = (self.kernel - 1) * self.dilation
        past = state.get("conv") if state is not None else None
        if past is None:
            past = x.new_zeros(x.shape[0], span, x.shape[2])
        full = torch.cat([past.to(x.dtype), x], dim=1)  # (B, span + T, d)
        if state is not None:
            state["conv"] = full[:, full.shape[1] - span:]
        y = F.conv1d(full.transpose(1, 2), self.conv.to(x.dtype), groups=x.shape[2],
                     dilation=self.dilation)  # (B, d, T)
        return F.silu(y.transpose(1, 2))

    def forward(self, h: torch.Tensor, table: ValueTable, indices: torch.Tensor,
                weights: torch.Tensor, padding_mask: torch.Tensor | None = None,
                state: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        e = self.memory_vector(table, indices, weights).to(h.dtype)
        v = self.value(e)  # (B, T, d)
        if self.key is not None:
            v = self.gate(h, e) * v
        if self.conv is not None:
            v = v + self.short_conv(v, padding_mask, state)
        return v

    def flops_per_token(self, reads_per_token: int, value_dim: int, d_model: int) -> int:
        width = self.value.in_features
        flops = 2 * reads_per_token * value_dim + 2 * width * d_model + d_model  # e, W_v e + b
        if self.key is not None:  # W_k e + b, two RMSNorms, dot, gate scale and multiply
            flops += 2 * width * d_model + d_model + 2 * 4 * d_model + 2 * d_model + 4 + d_model
        if self.conv is not None:  # RMSNorm, depthwise taps, SiLU, residual add
            flops += 3 * d_model + 2 * self.kernel * d_model + 4 * d_model + d_model
        return flops
