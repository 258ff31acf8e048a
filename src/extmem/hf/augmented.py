"""What the transformers Auto classes load a directory saved after `extmem.hf.add_memory` with.

Its config.json has `model_type = "extmem_augmented"` (`ExtmemAugmentedConfig`); after
`import extmem` the Auto classes map that config to the classes here, which are loaders, not
models: `from_pretrained` returns the base architecture's model (e.g. GPT2LMHeadModel) with the
memories rebuilt and loaded (`load_with_memory`), `from_config` a fresh one with new memories.
"""

from __future__ import annotations

import transformers
from torch import nn

from extmem.hf.configuration import ExtmemAugmentedConfig
from extmem.hf.saved import load_with_memory
from extmem.pretrained.inject import add_memory, split_config


class _AugmentedLoader:
    config_class = ExtmemAugmentedConfig
    auto_class = ""  # the transformers Auto class that builds the base model

    @classmethod
    def from_pretrained(cls, path, *model_args, **kwargs) -> nn.Module:
        return load_with_memory(path, getattr(transformers, cls.auto_class), *model_args,
                                **kwargs)

    @classmethod
    def _from_config(cls, config: ExtmemAugmentedConfig, **kwargs) -> nn.Module:
        base, memories = split_config(config)
        model = getattr(transformers, cls.auto_class).from_config(base, **kwargs)
        for memory in memories:
            add_memory(model, memory)
        return model


class ExtmemAugmentedForCausalLM(_AugmentedLoader):
    auto_class = "AutoModelForCausalLM"


class ExtmemAugmentedForMaskedLM(_AugmentedLoader):
    auto_class = "AutoModelForMaskedLM"


class ExtmemAugmentedForSequenceClassification(_AugmentedLoader):
    auto_class = "AutoModelForSequenceClassification"
