"""Insert memories into a trained dense model (Kim & Jung 2020, "Large Product Key Memory for
Pretrained Language Models": initialise the memory model from a dense one, then continue training).

The surgery is done on configs and state dicts:
- `default_memory` builds product-key memory with the paper's settings scaled to the model;
- `add_memories` returns the model config with the new memories attached;
- `transplant` copies every dense weight into the augmented model and reports what is new
  (the memories) and what was dropped (the FFN of each `replace_ffn` layer).

With `parallel_ffn` and a zero-initialised output projection the block computes
`x + FFN(norm(x)) + 0`, so the augmented model reproduces the dense model exactly at step 0.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from extmem.config import require
from extmem.errors import CheckpointError
from extmem.memory.config import MemoryConfig, Placement, ProductKeyConfig
from extmem.model.config import ModelConfig

# Kim & Jung 2020's product-key memory on a BERT-base sized model (d = 768): 4 heads, top-32,
# 512 sub-keys per half (262,144 slots), query width 256 (Lample et al. 2019's settings, which
# Kim & Jung 2020 keep).
PAPER_WIDTH = 768
PAPER_N_KEYS = 512
PAPER_HEADS = 4
PAPER_TOPK = 32
PAPER_KEY_DIM = 256


def _nearest_power_of_two(value: float) -> int:
    return 2 ** round(math.log2(max(value, 1.0)))


def default_product_keys(d_model: int) -> ProductKeyConfig:
    """The paper's product keys scaled to width `d_model`.

    Scaling rule (documented in README "extmem augment"):
    - heads = 4 (unchanged);
    - n_keys = 512 * d / 768 rounded to the nearest power of two, within [16, 512]
      (slots grow with width: d=768 -> 512^2 slots, d=128 -> 64^2 = 4,096 slots);
    - topk = n_keys / 8 within [2, 32] (32 of 512 in the paper; 8 of 64 at d=128);
    - key_dim = d / 2 rounded to even, within [16, 256] (256 at d=768 or wider).
    At d=128 this is exactly `configs/quickstart.toml`'s memory.
    """
    n_keys = min(max(_nearest_power_of_two(PAPER_N_KEYS * d_model / PAPER_WIDTH), 16),
                 PAPER_N_KEYS)
    topk = min(max(n_keys // 8, 2), PAPER_TOPK)
    key_dim = min(max(2 * (d_model // 4), 16), PAPER_KEY_DIM)
    return ProductKeyConfig(n_keys=n_keys, heads=PAPER_HEADS, topk=topk, key_dim=key_dim)


def default_memory(model: ModelConfig, layers: list[int],
                   placement: Placement = "parallel_ffn") -> MemoryConfig:
    """Product-key memory scaled to `model`, with a zero-initialised output path (MemoryConfig
    checks `placement` against PLACEMENTS)."""
    return MemoryConfig(layers=list(layers), placement=placement, zero_init_output=True,
                        product_keys=default_product_keys(model.d_model))


def add_memories(model: ModelConfig, memories: list[MemoryConfig]) -> ModelConfig:
    """The model config with `memories` appended (validated: layers must exist)."""
    require(len(memories) > 0, "augment: no memory to add")
    return dataclasses.replace(model, memories=[*model.memories, *memories])


def replaced_layers(model: ModelConfig) -> set[int]:
    """Layers whose FFN is replaced by a memory (their FFN weights do not exist)."""
    return {layer for m in model.memories if m.placement == "replace_ffn" for layer in m.layers}


def transplant(dense_state: dict[str, torch.Tensor], model: nn.Module,
               dropped_layers: set[int]) -> dict[str, list[str]]:
    """Copy the dense checkpoint's tensors into `model` (built with the new memories).

    Usage counters of memories the source already had are not copied: the augmented run
    starts its own step count at 0. Returns the names of copied, new and dropped tensors.
    """
    target = model.state_dict()
    dropped_prefixes = tuple(f"blocks.{layer}.ffn." for layer in sorted(dropped_layers))
    copied, dropped = [], []
    for name, tensor in dense_state.items():
        if dropped_prefixes and name.startswith(dropped_prefixes):
            dropped.append(name)
            continue
        if ".usage." in name:
            continue
        if name not in target:
            raise CheckpointError(f"augment: the checkpoint has {name!r}, which the augmented "
                                  "model lacks; was it written with a different model config?")
        if tensor.shape != target[name].shape:
            raise CheckpointError(f"augment: {name} has shape {tuple(tensor.shape)} in the "
                                  f"checkpoint but {tuple(target[name].shape)} in the model")
        with torch.no_grad():
            target[name].copy_(tensor)
        copied.append(name)
    filled = {target[n].data_ptr() for n in copied}  # tied tensors (lm_head = embed) count once
    new = [n for n, t in target.items()
           if n not in dense_state and t.data_ptr() not in filled and ".usage." not in n]
    return {"copied": copied, "new": new, "dropped": dropped}
