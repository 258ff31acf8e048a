"""A pre-norm transformer (nanoGPT-style, one file) whose FFN slots can carry memories.

Block: x = x + Attn(norm(x)); x = x + FFN(norm(x)) + sum(Mem(norm(x))) where `replace_ffn`
drops the FFN (Lample et al. 2019) and `parallel_ffn` keeps it (ResM, seed 2).
"""

from __future__ import annotations

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


class Rotary(nn.Module):
    """Rotary position embedding (rotate-half form) for (B, H, T, head_dim) tensors."""

    def __init__(self, head_dim: int, max_seq_len: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(max_seq_len).float(), inv_freq)  # (T, hd/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[-2]
        cos, sin = self.cos[:t].to(x.dtype), self.sin[:t].to(x.dtype)  # (T, hd/2)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.causal, self.dropout = cfg.n_heads, cfg.causal, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.rotary = Rotary(cfg.d_model // cfg.n_heads, cfg.max_seq_len, cfg.rope_base)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (B, H, T, hd)
        q, k = self.rotary(q), self.rotary(k)
        mask = None
        if padding_mask is not None:  # keys that are padding are never attended to
            mask = ~padding_mask[:, None, None, :]  # (B, 1, 1, T)
            if self.causal:
                mask = mask & torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=self.causal and mask is None,
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
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        replaced = any(m.placement == "replace_ffn" for m in memory_cfgs)
        self.ffn = None if replaced else FeedForward(cfg)
        self.memories = nn.ModuleList(Memory(m, cfg.d_model) for m in memory_cfgs)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor | None,
                padding_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + F.dropout(self.attn(self.attn_norm(x), padding_mask), self.dropout, self.training)
        h = self.ffn_norm(x)
        update = self.ffn(h) if self.ffn is not None else torch.zeros_like(h)
        for memory in self.memories:
            update = update + memory(h, input_ids=input_ids, padding_mask=padding_mask)
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

    def forward(self, input_ids: torch.Tensor,
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T); padding_mask (B, T) True at padding -> logits (B, T, V)."""
        if input_ids.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds model.max_seq_len="
                             f"{self.cfg.max_seq_len}")
        x = F.dropout(self.embed(input_ids), self.cfg.dropout, self.training)  # (B, T, d)
        for block in self.blocks:
            x = block(x, input_ids, padding_mask)
        return self.lm_head(self.final_norm(x))  # (B, T, V)
