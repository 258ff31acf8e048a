"""ExtmemConfig: a Hugging Face config that carries our ModelConfig as one nested dict.

`config.json` holds `"model": {...}` written by `extmem.config.to_dict(ModelConfig)` and read
back with `from_dict`, so every memory lookup / readout the project adds round-trips without a
change here. The usual HF names (`vocab_size`, `hidden_size`, ...) are read-only views of it.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from extmem.config import from_dict, to_dict
from extmem.model.config import ModelConfig


class ExtmemConfig(PretrainedConfig):
    model_type = "extmem"
    keys_to_ignore_at_inference = ["past_key_values"]  # noqa: RUF012 (HF class attribute)

    def __init__(self, model: dict[str, Any] | ModelConfig | None = None,
                 tie_word_embeddings: bool | None = None, use_cache: bool = True,
                 **kwargs: Any) -> None:
        data = to_dict(model) if isinstance(model, ModelConfig) else dict(model or {})
        self.model = to_dict(from_dict(ModelConfig, data, "model"))  # validated, fully resolved
        self.use_cache = use_cache
        # HF ties lm_head to the embedding from this flag; it must agree with our config
        self.tie_word_embeddings = (self.model["tie_embeddings"] if tie_word_embeddings is None
                                    else tie_word_embeddings)
        super().__init__(**kwargs)

    def __eq__(self, other: object) -> bool:  # all attributes, `model` included (not only
        return PretrainedConfig.__eq__(self, other)  # the dataclass fields HF declares)

    __hash__ = None  # mutable, like every HF config

    @property
    def model_config(self) -> ModelConfig:
        """Our dataclass config (a fresh object: edit `config.model` to change it)."""
        return from_dict(ModelConfig, self.model, "model")

    # Read-only HF-standard names, so generic HF code (generate, Trainer, pipelines) finds them.
    @property
    def vocab_size(self) -> int:
        return self.model["vocab_size"]

    @property
    def hidden_size(self) -> int:
        return self.model["d_model"]

    @property
    def num_hidden_layers(self) -> int:
        return self.model["n_layers"]

    @property
    def num_attention_heads(self) -> int:
        return self.model["n_heads"]

    @property
    def max_position_embeddings(self) -> int:
        return self.model["max_seq_len"]

    @property
    def is_decoder(self) -> bool:
        return self.model["causal"]
