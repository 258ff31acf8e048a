"""Configuration of one external memory: `Memory = Lookup x Table x Readout` at some layers.

Defaults follow Lample et al. 2019 (product-key memory, XLM): 4 heads, top-32, 512 sub-keys
per half (262,144 slots), query width 256; values read as a weighted embedding bag.
The placement default is `parallel_ffn` (ResM) because seed 2 (Large PKM for PLMs) finds it
crucial for memory usage and quality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from extmem.config import require

LOOKUPS = ("product_keys",)
READOUTS = ("add",)
PLACEMENTS = ("replace_ffn", "parallel_ffn")


@dataclass
class ProductKeyConfig:
    """Product-key search (Lample et al. 2019, section 3.2)."""

    n_keys: int = 512          # sub-keys per half; the memory has n_keys**2 slots
    heads: int = 4             # independent query heads, each reads `topk` slots
    topk: int = 32             # slots read per head (and candidates kept per half)
    key_dim: int = 256         # query width per head; each half-key has key_dim // 2
    # LayerNorm is the safe default: BatchNorm is best in Lample's paper but leaks statistics
    # across positions of a causal LM and must ignore padding (REFERENCE.md section 7).
    query_norm: Literal["layernorm", "batchnorm", "none"] = "layernorm"
    input_dropout: float = 0.0   # on the hidden state before the query network
    query_dropout: float = 0.0   # on the query

    def __post_init__(self) -> None:
        require(self.n_keys >= 1, f"product_keys.n_keys: {self.n_keys} must be >= 1")
        require(self.heads >= 1, f"product_keys.heads: {self.heads} must be >= 1")
        require(1 <= self.topk <= self.n_keys,
                f"product_keys.topk: {self.topk} is impossible with n_keys={self.n_keys}; "
                f"allowed 1 <= topk <= n_keys")
        require(self.key_dim >= 2 and self.key_dim % 2 == 0,
                f"product_keys.key_dim: {self.key_dim} must be even and >= 2 "
                f"(the query is split into two halves)")
        for name in ("input_dropout", "query_dropout"):
            value = getattr(self, name)
            require(0.0 <= value < 1.0, f"product_keys.{name}: {value} must be in [0, 1)")

    @property
    def num_slots(self) -> int:
        return self.n_keys * self.n_keys


@dataclass
class MemoryConfig:
    """One memory, inserted into the feed-forward slot of each layer in `layers`.

    Each listed layer gets its own table. `value_dim = 0` means the model width.
    `zero_init_output` zero-initialises the output projection so that a newly added memory
    leaves the model unchanged at step 0 (seed 2: initialise from a dense model).
    """

    layers: list[int] = field(default_factory=lambda: [0])
    placement: Literal["replace_ffn", "parallel_ffn"] = "parallel_ffn"
    lookup: Literal["product_keys"] = "product_keys"
    readout: Literal["add"] = "add"
    value_dim: int = 0
    value_dropout: float = 0.0   # on the read-out values (XLM's value dropout)
    zero_init_output: bool = False
    product_keys: ProductKeyConfig = field(default_factory=ProductKeyConfig)

    def __post_init__(self) -> None:
        require(len(self.layers) > 0, "memory.layers: empty; list at least one layer index")
        require(len(set(self.layers)) == len(self.layers),
                f"memory.layers: {self.layers} repeats a layer")
        require(all(layer >= 0 for layer in self.layers),
                f"memory.layers: {self.layers} has a negative index")
        require(self.value_dim >= 0, f"memory.value_dim: {self.value_dim} must be >= 0 "
                "(0 means the model width)")
        require(0.0 <= self.value_dropout < 1.0,
                f"memory.value_dropout: {self.value_dropout} must be in [0, 1)")

    @property
    def num_slots(self) -> int:
        return self.product_keys.num_slots
