"""A local Hugging Face checkpoint directory as the start of an extmem run.

Kim & Jung 2020 ("Large Product Key Memory for Pretrained Language Models", sec. 3.2) add
product-key memory to a *pretrained* model and continue pretraining it. This module reads such a
model from disk, never from the hub (`local_files_only`): its config, the language-model class
for its family, and its weights:

- encoders (BERT, RoBERTa and their relatives) train as masked LMs (`AutoModelForMaskedLM`);
  a checkpoint that holds only the encoder (`BertModel` weights, as sentence-transformers ship)
  gets a new MLM head: its transform is freshly initialised, its decoder tied to the word
  embeddings, and `load_language_model` names the created tensors so the caller can say so;
- decoders (GPT-2, the Llama family) train as causal LMs (`AutoModelForCausalLM`).

`init = "random"` builds the same architecture with fresh weights: the "scratch" arm of the
paper's comparison.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from extmem.errors import CheckpointError, ConfigError

# model_type -> causal? The families whose feed-forward slot extmem.pretrained.inject knows.
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra")
DECODER_TYPES = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "olmo", "phi3")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
CONFIG_NAME = "config.json"


@dataclass
class LoadedModel:
    """An HF language model and what loading it had to create (no weights in the checkpoint)."""

    model: nn.Module
    created: list[str] = field(default_factory=list)


def read_hf_config(path: Path) -> dict:
    """config.json of a Hugging Face checkpoint directory, as a dict; one-line errors."""
    file = Path(path) / CONFIG_NAME
    if not Path(path).is_dir():
        raise CheckpointError(f"{path}: not a directory; give a local Hugging Face checkpoint "
                              "directory (config.json + weights)")
    if not file.is_file():
        raise CheckpointError(f"{path}: no {CONFIG_NAME}; give a local Hugging Face checkpoint "
                              "directory (config.json + weights)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file}: not readable JSON ({exc})") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise CheckpointError(f"{file}: has no model_type; is it a Hugging Face config?")
    return data


def is_causal(hf_config: dict, source: str) -> bool:
    """Decoder (causal LM) or encoder (masked LM), from the config's model_type."""
    kind = hf_config["model_type"]
    if kind in ENCODER_TYPES:
        return False
    if kind in DECODER_TYPES:
        return True
    raise ConfigError(f"{source}: model_type {kind!r} is not supported; supported families: "
                      f"encoders {', '.join(ENCODER_TYPES)}; decoders {', '.join(DECODER_TYPES)}")


def has_weights(path: Path) -> bool:
    return any((Path(path) / name).is_file() for name in WEIGHT_FILES)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' load report and progress bars off while extmem reports the load itself."""
    from transformers.utils import logging as hf_logging
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _auto_class(causal: bool) -> type:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
    return AutoModelForCausalLM if causal else AutoModelForMaskedLM


def load_language_model(path: Path, init: str = "weights") -> LoadedModel:
    """The checkpoint at `path` as a (masked or causal) LM on the CPU, in float32, eval mode
    off (training mode). `init`: "weights" loads the checkpoint's weights (and creates a
    missing MLM / LM head); "random" builds the architecture with fresh weights."""
    from transformers import AutoConfig

    hf_dict = read_hf_config(path)
    causal = is_causal(hf_dict, str(path))
    auto = _auto_class(causal)
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: transformers cannot read its config ({exc})") from None
    # the language-model class of this family, whatever class the checkpoint was saved from
    config.architectures = None
    if init == "random":
        return LoadedModel(auto.from_config(config).float().train())
    if not has_weights(path):
        raise CheckpointError(f"{path}: no weights ({' or '.join(WEIGHT_FILES[::2])}); "
                              "use model.pretrained_init = 'random' for a fresh model of "
                              "this shape")
    with _quiet_transformers():
        try:
            model, info = auto.from_pretrained(str(path), config=config, local_files_only=True,
                                               output_loading_info=True, dtype="float32")
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: transformers cannot load its weights "
                                  f"({str(exc).splitlines()[0]})") from None
    created = sorted(info.get("missing_keys", []))
    return LoadedModel(model.float().train(), created)
