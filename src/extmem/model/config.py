"""ModelConfig: the dense transformer core and the memories attached to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from extmem.altup.config import AltUpConfig
from extmem.config import require, require_valid_fields
from extmem.memory.config import MemoryConfig


@dataclass
class ModelConfig:
    """Pre-norm transformer (RMSNorm, rotary positions, SwiGLU or GELU FFN).

    `causal = true` is a decoder LM; `causal = false` a bidirectional encoder whose LM head
    serves as the masked-LM head. `vocab_size = 0` takes the tokenizer's size at build time.
    `d_ff = 0` picks 4*d for GELU and the parameter-matched 8/3*d (rounded to 16) for SwiGLU.
    """

    vocab_size: int = 0
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 0
    ffn: Literal["swiglu", "gelu"] = "swiglu"
    causal: bool = True
    max_seq_len: int = 1024
    rope_base: float = 10000.0
    tie_embeddings: bool = True
    dropout: float = 0.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    memories: list[MemoryConfig] = field(default_factory=list)
    altup: AltUpConfig | None = None  # [model.altup]: Alternating Updates (extmem.altup)
    # A local Hugging Face checkpoint directory (extmem.pretrained; README "Bring your own
    # checkpoint"): the run's model is that model, BERT/RoBERTa encoders as masked LMs and
    # GPT-2/Llama-family decoders as causal LMs, with `memories` at its FFN slots. The fields
    # above must then describe its architecture (`extmem augment HF_DIR` writes them).
    # "" = extmem's own Transformer.
    pretrained: str = ""
    # "weights": start from the checkpoint's weights; "random": the same architecture freshly
    # initialised (the "scratch" arm of Kim & Jung 2020's comparison)
    pretrained_init: Literal["weights", "random"] = "weights"

    def __post_init__(self) -> None:
        require_valid_fields(self, "model")
        require(self.vocab_size >= 0, f"model.vocab_size: {self.vocab_size} must be >= 0")
        require(self.d_model >= 2, f"model.d_model: {self.d_model} must be >= 2")
        require(self.n_layers >= 1, f"model.n_layers: {self.n_layers} must be >= 1")
        require(self.n_heads >= 1, f"model.n_heads: {self.n_heads} must be >= 1")
        require(self.d_model % self.n_heads == 0,
                f"model.d_model: {self.d_model} is not divisible by model.n_heads="
                f"{self.n_heads}; choose a width that is a multiple of the heads")
        require(self.pretrained != "" or (self.d_model // self.n_heads) % 2 == 0,
                f"model.d_model / model.n_heads = {self.d_model // self.n_heads} must be even "
                "for rotary positions")
        require(self.d_ff >= 0, f"model.d_ff: {self.d_ff} must be >= 0 (0 = automatic)")
        require(self.max_seq_len >= 1, f"model.max_seq_len: {self.max_seq_len} must be >= 1")
        require(self.rope_base > 0, f"model.rope_base: {self.rope_base} must be > 0 (rotary "
                                    "frequencies are rope_base ** (-2i / head width))")
        require(self.norm_eps > 0, f"model.norm_eps: {self.norm_eps} must be > 0 (it keeps "
                                   "RMSNorm finite on an all-zero vector)")
        require(0.0 <= self.dropout < 1.0, f"model.dropout: {self.dropout} must be in [0, 1)")
        require(self.init_std > 0, f"model.init_std: {self.init_std} must be > 0")
        for i, memory in enumerate(self.memories):
            bad = [layer for layer in memory.layers if layer >= self.n_layers]
            require(not bad, f"model.memories[{i}].layers: {bad} out of range; this model has "
                             f"layers 0..{self.n_layers - 1}")
        self._check_altup_concat()
        self._check_pretrained()

    def _check_pretrained(self) -> None:
        """A Hugging Face model takes memories at its FFN slots only, and no AltUp."""
        if not self.pretrained:
            return
        require(self.altup is None, "model.altup: AltUp is not available with model.pretrained "
                                    "(it changes extmem's own layer stack)")
        for i, memory in enumerate(self.memories):
            require(memory.placement != "input",
                    f"model.memories[{i}].placement: 'input' is not available with "
                    "model.pretrained; choose 'parallel_ffn' or 'replace_ffn'")

    def _check_altup_concat(self) -> None:
        """Memories with concat_into = "altup" need AltUp memory blocks wide enough for them."""
        widths = [m.value_dim or self.d_model for m in self.memories if m.concat_into == "altup"]
        if not widths:
            return
        altup = self.altup
        require(altup is not None and altup.mode == "blocks",
                "model.memories.concat_into: 'altup' needs a [model.altup] table with "
                "mode = 'blocks' and extra_blocks >= 1")
        require(all(w % self.d_model == 0 for w in widths),
                f"model.memories.value_dim: {widths} must be multiples of model.d_model="
                f"{self.d_model} to fill whole AltUp memory blocks")
        needed = sum(widths) // self.d_model
        require(altup.extra_blocks >= needed,
                f"model.altup.extra_blocks: {altup.extra_blocks} is too few for the concat "
                f"memories' rows; they need {needed}")

    def altup_block_offsets(self) -> dict[int, int]:
        """memory index -> first AltUp memory block it writes (concat_into = "altup")."""
        offsets, first = {}, 0
        for i, memory in enumerate(self.memories):
            if memory.concat_into == "altup":
                offsets[i] = first
                first += (memory.value_dim or self.d_model) // self.d_model
        return offsets

    @property
    def ffn_hidden(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.ffn == "gelu":
            return 4 * self.d_model
        return 16 * round(8 * self.d_model / 3 / 16) or 16

    def memories_at(self, layer: int) -> list[tuple[int, MemoryConfig]]:
        """(index in `memories`, config) of each memory placed at `layer`, in config order."""
        return [(i, m) for i, m in enumerate(self.memories) if layer in m.layers]
