"""Parameter and FLOP accounting: dense core vs embeddings vs memory tables.

Experiments match models on these numbers, so table lookups are counted honestly: the
product-key search (query network, sub-key scores, k*k candidates) is included. FLOPs count a
multiply-add as 2; attention scores are counted at the average causal context (T/2 for a
decoder, T for an encoder). The LM head is counted at the positions training predicts: every
position of a decoder, the masked share (`train.mask_prob`) of a masked LM, whose training runs
the head at the masked positions only (`select` in the models' forward).
"""

from __future__ import annotations

import math

import torch

from extmem.model.transformer import Transformer


def _table_numel(model: Transformer, name: str, param: torch.Tensor) -> int:
    """The whole table's size, also when this process holds one rank's shard of it (a
    sharded table records its `global_shape`, extmem.distributed.tables)."""
    shape = getattr(model.get_submodule(name.rsplit(".", 1)[0]), "global_shape", None)
    return math.prod(shape) if shape is not None else param.numel()


def parameter_counts(model: Transformer) -> dict[str, int]:
    """Unique parameters split into core / embeddings / memory_tables / memory_routing (lookup:
    routers, query networks, sub-keys) / memory_readout (projections, gates); memory_other is
    routing + readout. Shared tables count once."""
    split = {"core": 0, "embeddings": 0, "memory_tables": 0, "memory_routing": 0,
             "memory_readout": 0}
    # a Hugging Face model with memories (extmem.pretrained) names its own embeddings and head
    embedding_prefixes = getattr(model, "embedding_prefixes", ("embed.", "lm_head."))
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        if name.startswith(embedding_prefixes):
            split["embeddings"] += param.numel()
        elif ".memories." in name and name.endswith("table.weight"):
            split["memory_tables"] += _table_numel(model, name, param)
        elif ".memories." in name and ".lookup." in name:
            split["memory_routing"] += param.numel()
        elif ".memories." in name:
            split["memory_readout"] += param.numel()
        else:
            split["core"] += param.numel()
    split["total"] = sum(split.values())
    split["memory_other"] = split["memory_routing"] + split["memory_readout"]
    return split


# train.mask_prob's default (extmem.run.config): the masked share a masked LM's head runs at
DEFAULT_MASK_PROB = 0.15


def head_share(causal: bool, mask_prob: float) -> float:
    """The share of positions the LM head runs at in training: every position of a causal LM,
    the expected masked share (`mask_prob`) of a masked LM (its loss selects them)."""
    return 1.0 if causal else mask_prob


def flops_per_token(model: Transformer, seq_len: int,
                    mask_prob: float = DEFAULT_MASK_PROB) -> dict[str, int]:
    """Forward FLOPs per token: core (attention + FFN), memory (lookups + reads), lm_head.

    `lm_head` is the head's cost per token trained: at every position of a causal LM, at the
    `mask_prob` share of positions of a masked LM (ignored for a causal LM)."""
    if not isinstance(model, Transformer):  # extmem.pretrained.PretrainedLM counts its own
        return model.flops_per_token(seq_len, mask_prob)
    cfg = model.cfg
    d = cfg.d_model
    altup = model.altup  # extmem.altup: Sequence-AltUp runs the layers on 1/K of the positions
    share = altup.layer_share if altup is not None else 1.0
    context = seq_len * share / 2 if cfg.causal else seq_len * share
    attention = 2 * 4 * d * d + int(2 * 2 * context * d)
    core = memory = 0
    for block in model.blocks:
        core += attention
        if block.ffn is not None:
            core += 2 * d * cfg.ffn_hidden * (3 if block.ffn.gate is not None else 2)
        memory += sum(m.flops_per_token() for m in block.memories)
    core, memory = int(core * share), int(memory * share)
    if altup is not None:  # predict / correct (and expand / collapse) count as core
        core += altup.flops_per_token()
    head = 2 * model.lm_head.in_features * cfg.vocab_size  # K*d wide for standard AltUp
    lm_head = int(head * head_share(cfg.causal, mask_prob))
    return {"core": core, "memory": memory, "lm_head": lm_head,
            "total": core + memory + lm_head}
