"""Parameter and FLOP accounting: dense core vs embeddings vs memory tables.

Experiments match models on these numbers, so table lookups are counted honestly: the
product-key search (query network, sub-key scores, k*k candidates) is included. FLOPs count a
multiply-add as 2; attention scores are counted at the average causal context (T/2 for a
decoder, T for an encoder).
"""

from __future__ import annotations

from extmem.model.transformer import Transformer


def parameter_counts(model: Transformer) -> dict[str, int]:
    """Unique parameters split into core / embeddings / memory_tables / memory_other."""
    split = {"core": 0, "embeddings": 0, "memory_tables": 0, "memory_other": 0}
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        if name.startswith(("embed.", "lm_head.")):
            split["embeddings"] += param.numel()
        elif ".memories." in name and name.endswith("table.weight"):
            split["memory_tables"] += param.numel()
        elif ".memories." in name:
            split["memory_other"] += param.numel()
        else:
            split["core"] += param.numel()
    split["total"] = sum(split.values())
    return split


def flops_per_token(model: Transformer, seq_len: int) -> dict[str, int]:
    """Forward FLOPs per token: core (attention + FFN), memory (lookups + reads), lm_head."""
    cfg = model.cfg
    d = cfg.d_model
    context = seq_len / 2 if cfg.causal else seq_len
    attention = 2 * 4 * d * d + int(2 * 2 * context * d)
    core = memory = 0
    for block in model.blocks:
        core += attention
        if block.ffn is not None:
            core += 2 * d * cfg.ffn_hidden * (3 if block.ffn.gate is not None else 2)
        memory += sum(m.flops_per_token() for m in block.memories)
    lm_head = 2 * d * cfg.vocab_size
    return {"core": core, "memory": memory, "lm_head": lm_head,
            "total": core + memory + lm_head}
