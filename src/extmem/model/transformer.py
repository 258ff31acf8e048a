"""A pre-norm transformer (nanoGPT-style, one file) whose FFN slots can carry memories.

Block: x = x + Attn(norm(x)); x = x + FFN(norm(x)) + sum(Mem(norm(x))) where `replace_ffn`
drops the FFN (Lample et al. 2019) and `parallel_ffn` keeps it (ResM, seed 2).
Decoding can pass a `DecodeCache` (keys/values per layer and the token history that token and
n-gram lookups need), so generation costs one position per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from extmem.memory.module import Memory
from extmem.model.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


@dataclass
class DecodeCache:
    """State carried between decoding steps of a causal model.

    keys/values: per layer (B, H, T_past, head_dim); token_ids: (B, T_past) ids seen so far
    (what hashed n-gram lookups need to look back across steps).
    """

    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    token_ids: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.token_ids is None else self.token_ids.shape[1]


class Rotary(nn.Module):
    """Rotary position embedding (rotate-half form) for (B, H, T, head_dim) tensors."""

    def __init__(self, head_dim: int, max_seq_len: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(max_seq_len).float(), inv_freq)  # (T, hd/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        t = x.shape[-2]
        cos = self.cos[offset:offset + t].to(x.dtype)  # (T, hd/2)
        sin = self.sin[offset:offset + t].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.causal, self.dropout = cfg.n_heads, cfg.causal, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.rotary = Rotary(cfg.d_model // cfg.n_heads, cfg.max_seq_len, cfg.rope_base)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None,
                cache: DecodeCache | None = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (B, H, T, hd)
        offset = cache.length if cache is not None else 0
        q, k = self.rotary(q, offset), self.rotary(k, offset)
        if cache is not None:  # attend to the cached past, then remember this step
            if self.layer in cache.keys:
                k = torch.cat([cache.keys[self.layer], k], dim=2)  # (B, H, T_past + T, hd)
                v = torch.cat([cache.values[self.layer], v], dim=2)
            cache.keys[self.layer], cache.values[self.layer] = k, v
        mask = None
        if cache is not None and offset and t > 1:  # new queries see the past and causal present
            mask = torch.ones(t, k.shape[2], dtype=torch.bool, device=x.device).tril(offset)
        elif padding_mask is not None:  # keys that are padding are never attended to
            mask = ~padding_mask[:, None, None, :]  # (B, 1, 1, T)
            if self.causal:
                mask = mask & torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=self.causal and mask is None and not offset,
            dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, hd)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.swiglu = cfg.ffn == "swiglu"
        hidden = cfg.ffn_hidden
        self.up = nn.Linear(cfg.d_model, hidden, bias=False)
        self.gate = nn.Linear(cfg.d_model, hidden, bias=False) if self.swiglu else None
        self.down = nn.Linear(hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        memory_cfgs = cfg.memories_at(layer)
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        replaced = any(m.placement == "replace_ffn" for m in memory_cfgs)
        self.ffn = None if replaced else FeedForward(cfg)
        self.memories = nn.ModuleList(Memory(m, cfg.d_model) for m in memory_cfgs)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor | None,
                padding_mask: torch.Tensor | None,
                cache: DecodeCache | None = None) -> torch.Tensor:
        attn = self.attn(self.attn_norm(x), padding_mask, cache)
        x = x + F.dropout(attn, self.dropout, self.training)
        h = self.ffn_norm(x)
        update = self.ffn(h) if self.ffn is not None else torch.zeros_like(h)
        past_ids = cache.token_ids if cache is not None else None
        for memory in self.memories:
            update = update + memory(h, input_ids=input_ids, padding_mask=padding_mask,
                                     past_ids=past_ids)
        return x + F.dropout(update, self.dropout, self.training)


class Transformer(nn.Module):
    """Token ids (B, T) -> logits (B, T, V). Decoder LM (causal) or masked-LM encoder."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (> 0) before building a model")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layers))
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._init_weights()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def _init_weights(self) -> None:
        std = self.cfg.init_std
        for name, module in self.named_modules():
            if ".memories." in f".{name}.":
                continue  # memories initialise themselves (keys, values, zero output)
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
        # GPT-2 style: scale residual output projections by depth
        for block in self.blocks:
            nn.init.normal_(block.attn.out.weight, std=std / (2 * self.cfg.n_layers) ** 0.5)
            if block.ffn is not None:
                nn.init.normal_(block.ffn.down.weight, std=std / (2 * self.cfg.n_layers) ** 0.5)

    def memory_modules(self) -> list[tuple[str, Memory]]:
        return [(name, m) for name, m in self.named_modules() if isinstance(m, Memory)]

    def set_memory_step(self, step: int) -> None:
        """Tell usage counters the current training step (for windowed usage / staleness)."""
        for _, memory in self.memory_modules():
            memory.usage.step.fill_(step)

    def run_blocks(self, x: torch.Tensor, input_ids: torch.Tensor,
                   padding_mask: torch.Tensor | None,
                   cache: DecodeCache | None) -> torch.Tensor:
        """The layer stack on the residual stream x (B, T, d). Variants (AltUp) override this."""
        for block in self.blocks:
            x = block(x, input_ids, padding_mask, cache)
        return x

    def forward(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None,
                cache: DecodeCache | None = None) -> torch.Tensor:
        """input_ids (B, T); padding_mask (B, T) True at padding -> logits (B, T, V).

        With a `cache` (causal models only), input_ids are the new positions after the cached
        ones; the cache is updated in place.
        """
        past = cache.length if cache is not None else 0
        if past + input_ids.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {past + input_ids.shape[1]} exceeds "
                             f"model.max_seq_len={self.cfg.max_seq_len}")
        if cache is not None and not self.cfg.causal:
            raise ValueError("a DecodeCache needs a causal model (model.causal = true)")
        x = F.dropout(self.embed(input_ids), self.cfg.dropout, self.training)  # (B, T, d)
        x = self.run_blocks(x, input_ids, padding_mask, cache)
        if cache is not None:
            cache.token_ids = (input_ids if cache.token_ids is None
                               else torch.cat([cache.token_ids, input_ids], dim=1))
        return self.lm_head(self.final_norm(x))  # (B, T, V)
