"""ExtmemConfig: a Hugging Face config that carries our ModelConfig as one nested dict.

`config.json` holds `"model": {...}` written by `extmem.config.to_dict(ModelConfig)` and read
back with `from_dict`, so every memory lookup / readout the project adds round-trips without a
change here. The usual HF names (`vocab_size`, `hidden_size`, ...) are read-only views of it.
Every save also writes `extmem_version` and `extmem_load` (how to load it: transformers alone
does not know `model_type = "extmem"`, and `config.json` is what a user without extmem reads).

`ExtmemAugmentedConfig` is what `config.json` of a Hugging Face model saved after
`extmem.hf.add_memory` reads as (`extmem.pretrained.inject`).
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import CONFIG_MAPPING, PretrainedConfig

from extmem.config import from_dict, to_dict
from extmem.model.config import ModelConfig
from extmem.pretrained.names import AUGMENTED_TYPE, BASE_TYPE_KEY, LOAD_KEY, VERSION_KEY


def extmem_version() -> str:
    import extmem  # the package root (already imported: this module is below it)
    return extmem.__version__


def load_line(auto_class: str) -> str:
    """The `extmem_load` line of a config.json."""
    return (f"needs the extmem package (pip install \"extmem[hf]\"); in Python: import extmem, "
            f"then transformers.{auto_class}.from_pretrained(DIR)")


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
        # written by this version, whatever an older config.json said
        kwargs.pop(VERSION_KEY, None)
        kwargs.pop(LOAD_KEY, None)
        self.extmem_version = extmem_version()
        auto = "AutoModelForCausalLM" if self.model["causal"] else "AutoModelForMaskedLM"
        setattr(self, LOAD_KEY, load_line(auto))
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


class ExtmemAugmentedConfig(PretrainedConfig):
    """`config.json` of a Hugging Face model saved after `extmem.hf.add_memory`: the base
    model's own fields, its model type under `extmem_base_model_type` and the memories under
    `extmem_memories`. The model type is ours, so that plain transformers cannot load the model
    without noticing its memories; `base_config()` is the base model's config again."""

    model_type = AUGMENTED_TYPE

    def base_config(self) -> PretrainedConfig:
        """The base architecture's config (e.g. GPT2Config), `extmem_memories` included."""
        data = copy.deepcopy(self.to_dict())
        base_type = data.pop(BASE_TYPE_KEY, None)
        if base_type not in CONFIG_MAPPING:
            raise ValueError(f"{AUGMENTED_TYPE} config: {BASE_TYPE_KEY} = {base_type!r} is not a "
                             "model type this transformers knows")
        for key in ("model_type", "transformers_version", LOAD_KEY, VERSION_KEY):
            data.pop(key, None)
        return CONFIG_MAPPING[base_type].from_dict(data)
