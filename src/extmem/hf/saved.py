"""`load_with_memory`: a model saved after `extmem.hf.add_memory` loaded with its memories.

`save_pretrained` after `add_memory` (extmem.pretrained.inject) writes the memories' weights
and lists their configs in config.json; this rebuilds them on the loaded base model and fills
their weights from the safetensors file(s) (docs/huggingface.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from extmem.errors import CheckpointError
from extmem.pretrained.inject import add_memory, split_config
from extmem.run.checkpoint import unique_state_dict


def _checkpoint_tensors(path: Path, names: set[str]) -> dict[str, torch.Tensor]:
    """The tensors `names` from the safetensors file(s) of a save_pretrained directory."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{path}: no model.safetensors (or index) to read memories from")
    found = {}
    for file in files:
        with safe_open(str(path / file), framework="pt") as f:
            for name in names & set(f.keys()):
                found[name] = f.get_tensor(name)
    return found


def load_with_memory(path: str | Path, model_class, *model_args, **kwargs) -> nn.Module:
    """`model_class.from_pretrained(path, ...)` (an Auto class or an architecture class) with
    the memories recorded in its config rebuilt and their weights loaded. `path` is a local
    directory written by `save_pretrained` after `add_memory`; `config=` may override its
    config.json (an `extmem_augmented` config or the base architecture's)."""
    from transformers import AutoConfig
    from transformers.utils import logging

    path = Path(path)
    config, specs = split_config(kwargs.pop("config", None) or AutoConfig.from_pretrained(path))
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # memory weights are "unexpected" to the plain class
    try:
        model = model_class.from_pretrained(path, *model_args, config=config, **kwargs)
    finally:
        logging.set_verbosity(verbosity)
    for spec in specs:
        add_memory(model, spec)
    wanted = {name for name in unique_state_dict(model) if ".memories." in name}
    found = _checkpoint_tensors(path, wanted)
    missing = sorted(wanted - set(found))
    if missing:
        raise CheckpointError(f"{path}: the config lists memories but the weights lack "
                              f"{missing[:3]}")
    model.load_state_dict(found, strict=False)
    return model
