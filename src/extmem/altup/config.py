"""AltUpConfig: Alternating Updates (Baykal et al. 2023) over any model config.

"Alternating Updates for Efficient Transformers" (NeurIPS 2023). Defaults follow the paper
(K = 2 blocks, the active block alternates `l mod K`, a K*d wide token embedding) with the
initialisation that makes the model at step 0 the dense model (predictor = identity, correction
gains = 1; with `embedding = "recycled"` the d-wide embedding is replicated in and the blocks
averaged out, so the logits equal the dense model's with the same weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from extmem.config import require, require_valid_fields


@dataclass
class AltUpConfig:
    """One `[model.altup]` table; absent means the dense model.

    mode: `blocks` widens each token to K blocks of width d and runs the layer on one block
      (AltUp); `sequence` runs the layer on one of every K positions and predicts / corrects
      the others from the nearest earlier computed position (Sequence-AltUp, strictly causal).
    k: blocks per token (`blocks`) or positions per group (`sequence`); the layer computes one
      of every K.
    active: which block (or position in a group) the layer computes: `alternating` = l mod K
      (the paper), `same` = always 0 (Gemma 3n).
    embedding (`blocks` only): `standard` = a K*d wide token embedding and output head (the
      paper's AltUp: K times the token-indexed parameters), `recycled` = the d embedding
      replicated K times in, the blocks averaged before the output head (Recycled-AltUp),
      `learned` = block 0 is the embedding, blocks 1..K-1 learned d x d projections of it,
      collapsed by learned projections and averaged (Gemma 3n; magnitudes renormalised to
      block 0's, as Gemma 3n does).
    coefficients (`blocks` only): `scalar` = a K x K predictor and K gains per layer (the
      paper), `router` = per-token coefficients from a tiny router on the active block,
      tanh(W norm(x) / d), predictor I + P(x), gains 1 + c(x) (Gemma 3n).
    coef_clip: the router's coefficient weights are clipped to [-coef_clip, coef_clip]
      (Gemma 3n's altup_coef_clip = 120); 0 disables clipping.
    init: `identity` starts as the dense model (predictor I, gains 1, projections I);
      `random` draws predictors and projections from N(0, 1/fan_in) instead (the sensitivity
      experiment, claim 7 in docs/results.md, not run yet: a third-party reimplementation of
      AltUp found random projections catastrophic).
    extra_blocks (`blocks` only): blocks appended after the K computed ones that no layer runs
      on; they start at zero, take part in predict / correct, and are where a memory's
      `concat` readout writes its rows (`BlockAltUp.write_extra`), so the memory widens the
      token at no extra layer compute. The output head reads only the first K blocks.
    """

    mode: Literal["blocks", "sequence"] = "blocks"
    k: int = 2
    active: Literal["alternating", "same"] = "alternating"
    embedding: Literal["standard", "recycled", "learned"] = "standard"
    coefficients: Literal["scalar", "router"] = "scalar"
    coef_clip: float = 120.0
    init: Literal["identity", "random"] = "identity"
    extra_blocks: int = 0
    # `sequence` only: what the positions a layer skips get. "predict": Sequence-AltUp's
    # predict / correct from the computed neighbour; "pass": nothing, they keep their value
    # (plain token dropping at the same kept fraction 1/K: the baseline of claim 8)
    skipped: Literal["predict", "pass"] = "predict"

    def __post_init__(self) -> None:
        require_valid_fields(self, "model.altup")
        require(isinstance(self.k, int) and not isinstance(self.k, bool) and self.k >= 2,
                f"model.altup.k: {self.k!r} must be an integer >= 2 (K = 1 is the dense model: "
                "leave out [model.altup])")
        require(self.coef_clip >= 0, f"model.altup.coef_clip: {self.coef_clip} must be >= 0 "
                                     "(0 disables clipping)")
        require(isinstance(self.extra_blocks, int) and self.extra_blocks >= 0,
                f"model.altup.extra_blocks: {self.extra_blocks!r} must be an integer >= 0")
        require(self.skipped == "predict" or self.mode == "sequence",
                f"model.altup.skipped: {self.skipped!r} needs mode = 'sequence' (in 'blocks' "
                "mode every position runs every layer)")
        if self.mode == "sequence":
            for name, default in (("embedding", "standard"), ("coefficients", "scalar"),
                                  ("extra_blocks", 0)):
                value = getattr(self, name)
                require(value == default,
                        f"model.altup.{name}: {value!r} needs mode = 'blocks'; Sequence-AltUp "
                        f"keeps the d-wide embedding and scalar coefficients (leave {name} "
                        f"unset, i.e. {default!r})")

    @property
    def total_blocks(self) -> int:
        """K computed blocks plus the extra (memory) blocks."""
        return self.k + self.extra_blocks

    def token_width(self, d_model: int) -> int:
        """Width of the token embedding and output head: K*d for standard AltUp, else d."""
        wide = self.mode == "blocks" and self.embedding == "standard"
        return self.k * d_model if wide else d_model
