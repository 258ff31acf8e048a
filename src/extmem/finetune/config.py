"""FinetuneConfig: the `--set key=value` fields of `extmem finetune`.

Defaults are small-model settings that finish in minutes on a CPU: AdamW at 1e-3 with a
short warmup and cosine decay to 0, mean pooling, 10 % of the examples held out.
"""

from __future__ import annotations

from dataclasses import dataclass

from extmem.config import require, require_valid_fields
from extmem.model.classifier import Pooling

MODES = ("full", "frozen-base", "memory-only")


@dataclass
class FinetuneConfig:
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    memory_values_lr: float = 0.0   # memory value tables; 0 = same as lr
    weight_decay: float = 0.01
    warmup_steps: int = 30
    grad_clip: float = 1.0          # 0 disables clipping
    max_len: int = 64               # tokens per example (EOS + text), longer texts are cut
    pooling: Pooling = "mean"
    dropout: float = 0.1            # on the pooled vector
    eval_fraction: float = 0.1      # held-out share, chosen by a hash of the text
    max_examples: int = 0           # 0 = all; otherwise a fixed random subset
    eval_batch_size: int = 64
    log_every: int = 10
    seed: int = 0
    save_weights: bool = True       # classifier.safetensors in the results directory
    text_field: str = "text"        # CSV / JSONL / HF column holding the text
    label_field: str = "label"      # ... and the label
    hf_config: str = ""             # HF datasets configuration name
    hf_split: str = "train"         # HF split to load (then split by hash)
    wordnet_dir: str = "/usr/share/wordnet"  # Debian wordnet-base files
    facts_entities: int = 100       # size of the generated facts-attribute task

    def __post_init__(self) -> None:
        require_valid_fields(self, "finetune")
        for name in ("steps", "batch_size", "max_len", "eval_batch_size", "log_every",
                     "facts_entities"):
            value = getattr(self, name)
            require(value >= 1, f"finetune.{name}: {value} must be >= 1")
        require(self.max_len >= 2, f"finetune.max_len: {self.max_len} must be >= 2")
        for name in ("warmup_steps", "max_examples", "seed"):
            value = getattr(self, name)
            require(value >= 0, f"finetune.{name}: {value} must be >= 0")
        require(self.lr > 0, f"finetune.lr: {self.lr} must be > 0")
        require(self.memory_values_lr >= 0,
                f"finetune.memory_values_lr: {self.memory_values_lr} must be >= 0 (0 = lr)")
        require(self.weight_decay >= 0, f"finetune.weight_decay: {self.weight_decay} must be >= 0")
        require(self.grad_clip >= 0, f"finetune.grad_clip: {self.grad_clip} must be >= 0")
        require(0 <= self.dropout < 1, f"finetune.dropout: {self.dropout} must be in [0, 1)")
        require(0 < self.eval_fraction < 1,
                f"finetune.eval_fraction: {self.eval_fraction} must be in (0, 1)")
