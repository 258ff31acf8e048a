"""A pre-norm transformer (nanoGPT-style, one file) whose FFN slots can carry memories.

Block: x = x + Attn(norm(x)); x = x + FFN(norm(x)) + sum(Mem(norm(x))) where `replace_ffn`
drops the FFN (Lample et al. 2019) and `parallel_ffn` keeps it (ResM: Kim & Jung 2020, "Large
Product Key Memory for Pretrained Language Models").
Decoding can pass a `DecodeCache` (keys/values per layer, the token history that token and
n-gram lookups need, and the state of memories that mix positions: Engram's convolution), so
generation costs one position per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from extmem.altup import build_altup
from extmem.decode_cache import DecodeCache
from extmem.layers import RMSNorm
from extmem.memory.module import Memory
from extmem.memory.table import ValueTable
from extmem.model.config import ModelConfig
from extmem.model.memory_host import MemoryHost


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
        if cache is not None and offset:  # new queries see the past and causal present
            if t > 1:
                mask = torch.ones(t, k.shape[2], dtype=torch.bool, device=x.device).tril(offset)
            padded = cache.key_padding(padding_mask, t)  # (B, T_past + T) or None
            if padded is not None:  # never attend to padded keys, past or new
                keep = ~padded[:, None, None, :]  # (B, 1, 1, T_past + T)
                mask = keep if mask is None else keep & mask
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
    """x = x + sum(input memories(norm(x))); x = x + Attn(norm(x));
    x = x + FFN(norm(x)) + sum(FFN-slot memories(norm(x)))."""

    def __init__(self, cfg: ModelConfig, layer: int,
                 shared_tables: dict[int, ValueTable] | None = None) -> None:
        super().__init__()
        shared_tables = {} if shared_tables is None else shared_tables
        self.layer = layer
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        placed = cfg.memories_at(layer)
        replaced = any(m.placement == "replace_ffn" for _, m in placed)
        self.ffn = None if replaced else FeedForward(cfg)
        self.memories = nn.ModuleList()
        for i, mem_cfg in placed:
            memory = Memory(mem_cfg, cfg.d_model, cfg.vocab_size, layer,
                            table=shared_tables.get(i) if mem_cfg.share_table else None)
            if mem_cfg.share_table:
                shared_tables.setdefault(i, memory.table)
            memory.altup_first_block = cfg.altup_block_offsets().get(i)  # concat_into = "altup"
            self.memories.append(memory)
        has_input = any(m.placement == "input" for _, m in placed)
        self.input_norm = RMSNorm(cfg.d_model, cfg.norm_eps) if has_input else None
        self.dropout = cfg.dropout

    def _memory_update(self, h: torch.Tensor, placement_input: bool, input_ids: torch.Tensor | None,
                       padding_mask: torch.Tensor | None,
                       cache: DecodeCache | None) -> torch.Tensor | None:
        past_ids = cache.token_ids if cache is not None else None  # (B, P)
        past_padding = cache.padding if cache is not None else None  # (B, P) or None
        update = None
        for slot, memory in enumerate(self.memories):
            if (memory.cfg.placement == "input") != placement_input:
                continue
            state = cache.memory_state(f"{self.layer}.{slot}") if cache is not None else None
            out = memory(h, input_ids=input_ids, padding_mask=padding_mask, past_ids=past_ids,
                         state=state, past_padding=past_padding)
            if out is not None:  # None: a concat memory that writes into AltUp blocks
                update = out if update is None else update + out
        return update

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor | None,
                padding_mask: torch.Tensor | None,
                cache: DecodeCache | None = None) -> torch.Tensor:
        if self.input_norm is not None:
            update = self._memory_update(self.input_norm(x), True, input_ids, padding_mask, cache)
            x = x + F.dropout(update, self.dropout, self.training)
        attn = self.attn(self.attn_norm(x), padding_mask, cache)
        x = x + F.dropout(attn, self.dropout, self.training)
        h = self.ffn_norm(x)
        update = self._memory_update(h, False, input_ids, padding_mask, cache)
        if self.ffn is not None:
            update = self.ffn(h) if update is None else update + self.ffn(h)
        if update is None:
            return x
        return x + F.dropout(update, self.dropout, self.training)


class Transformer(MemoryHost):
    """Token ids (B, T) -> logits (B, T, V). Decoder LM (causal) or masked-LM encoder."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (> 0) before building a model")
        self.cfg = cfg
        # AltUp "standard" (extmem.altup) widens the token to K*d outside the layers: the
        # embedding, final norm and output head; everything else stays d wide
        width = cfg.altup.token_width(cfg.d_model) if cfg.altup is not None else cfg.d_model
        self.embed = nn.Embedding(cfg.vocab_size, width)
        shared_tables: dict[int, ValueTable] = {}  # memory index -> its one shared table
        self.blocks = nn.ModuleList(Block(cfg, layer, shared_tables)
                                    for layer in range(cfg.n_layers))
        self.final_norm = RMSNorm(width, cfg.norm_eps)
        self.lm_head = nn.Linear(width, cfg.vocab_size, bias=False)
        self._init_weights()
        # AltUp runs self.blocks on its wider stream (run_blocks); built after the dense
        # weights so that, for one seed, those draw the same numbers as without AltUp
        self.altup = (build_altup(cfg.altup, cfg.d_model, cfg.n_layers, cfg.norm_eps)
                      if cfg.altup is not None else None)
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

    def start_prefetches(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None,
                         cache: DecodeCache | None) -> None:
        """memory.prefetch: before the first layer, start gathering the rows of every memory
        that prefetches (token-id lookups on host / mmap tables, `Memory.start_prefetch`) on
        the tables' background thread, in layer order, while the earlier layers run."""
        past_ids = cache.token_ids if cache is not None else None  # (B, P)
        past_padding = cache.padding if cache is not None else None  # (B, P) or None
        for block in self.blocks:
            for memory in block.memories:
                if memory.prefetch:
                    memory.start_prefetch(input_ids, padding_mask, past_ids, past_padding)

    def run_blocks(self, x: torch.Tensor, input_ids: torch.Tensor,
                   padding_mask: torch.Tensor | None,
                   cache: DecodeCache | None) -> torch.Tensor:
        """The layer stack on the residual stream x (B, T, d); with `model.altup`, AltUp runs
        the same blocks on its wider stream (x is (B, T, K*d) for standard AltUp)."""
        if self.altup is not None:
            return self.altup(self.blocks, x, input_ids, padding_mask, cache)
        for block in self.blocks:
            x = block(x, input_ids, padding_mask, cache)
        return x

    def forward(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None,
                cache: DecodeCache | None = None,
                select: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T); padding_mask (B, T) True at padding -> logits (B, T, V).

        With a `cache` (causal models only), input_ids are the new positions after the cached
        ones; the cache is updated in place. `select` (B, T) bool: logits only at those
        positions, (N, V) in row-major order (the masked positions of masked LM: the head's
        cost then scales with the 15 % predicted, not with every token).
        """
        hidden = self.features(input_ids, padding_mask, cache)  # (B, T, d)
        if select is not None:
            hidden = hidden[select]  # (N, d)
        return self.lm_head(hidden)

    def features(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None,
                 cache: DecodeCache | None = None) -> torch.Tensor:
        """The final-normed hidden states (B, T, lm_head.in_features) that the LM head reads
        (classification heads read them too); arguments as for `forward`."""
        past = cache.length if cache is not None else 0
        if past + input_ids.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {past + input_ids.shape[1]} exceeds "
                             f"model.max_seq_len={self.cfg.max_seq_len}")
        if cache is not None and not self.cfg.causal:
            raise ValueError("a DecodeCache needs a causal model (model.causal = true)")
        self.start_prefetches(input_ids, padding_mask, cache)
        x = F.dropout(self.embed(input_ids), self.cfg.dropout, self.training)  # (B, T, d)
        x = self.run_blocks(x, input_ids, padding_mask, cache)
        if cache is not None:
            cache.remember(input_ids, padding_mask)
        return self.final_norm(x)
