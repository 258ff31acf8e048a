"""Alternating Updates (AltUp; Baykal et al. 2023, "Alternating Updates for Efficient
Transformers": a wider token at the same layer compute; "The Power of External Memory in
Increasing Predictive Model Capacity", Baykal et al. 2023, motivates it as the carrier of
concatenated memory rows).

- config.py        AltUpConfig: `[model.altup]`
- coefficients.py  predict / correct per layer: scalar (the paper) or router (Gemma 3n)
- streams.py       embedding <-> K blocks: standard (K*d), recycled, learned (Gemma 3n)
- blocks.py        BlockAltUp: the layer stack on the K-block stream (+ memory blocks)
- sequence.py      SequenceAltUp: the layer on one of every K positions, causal

`Transformer.run_blocks` hands its blocks to the module `build_altup` returns.
"""

from __future__ import annotations

from extmem.altup.blocks import BlockAltUp
from extmem.altup.config import AltUpConfig
from extmem.altup.sequence import SequenceAltUp

AltUp = BlockAltUp | SequenceAltUp


def build_altup(cfg: AltUpConfig, d_model: int, n_layers: int, norm_eps: float) -> AltUp:
    if cfg.mode == "sequence":
        return SequenceAltUp(cfg, d_model, n_layers)
    return BlockAltUp(cfg, d_model, n_layers, norm_eps)


__all__ = ["AltUp", "AltUpConfig", "BlockAltUp", "SequenceAltUp", "build_altup"]
