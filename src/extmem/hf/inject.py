"""Our `Memory` modules inside Hugging Face GPT-2, BERT and Llama-family models.

`add_memory(model, MemoryConfig(...), layers=[1], placement="parallel_ffn")` puts a memory at
the feed-forward slot of each chosen layer, reading the same normed input the FFN reads:

- GPT-2 / Llama family (`layer.mlp`, pre-norm): `parallel_ffn` keeps the MLP and a forward
  hook adds `Memory(x)` to its output; `replace_ffn` swaps `layer.mlp` for the memories.
- BERT family (`layer.intermediate` + `layer.output`, post-norm): the FFN input is the
  attention output x; `parallel_ffn` adds `Memory(x)` beside `dense(intermediate(x))` before
  the residual LayerNorm; `replace_ffn` drops both dense layers.

Original parameter names never change (memories live at `...mlp.memories.N` /
`...output.memories.N`), so the base weights of a saved augmented model still load into the
plain class. With `zero_init_output` a new memory returns exactly zero, so `parallel_ffn` leaves
the logits unchanged at init. Token / n-gram lookups read the ids captured by a pre-hook on the
base model (and, during cached decoding, the ids of earlier steps).

The memories are recorded in `model.config.extmem_memories` (a list of MemoryConfig dicts), so
`save_pretrained` keeps them; plain `from_pretrained` cannot rebuild them (the architecture
class knows nothing of them): `load_with_memory(DIR, AutoModelFor...)` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from extmem.config import from_dict, require, to_dict
from extmem.errors import CheckpointError, ConfigError
from extmem.memory.config import PLACEMENTS, MemoryConfig
from extmem.memory.module import Memory
from extmem.model.resources import check_table_memory, memory_need

CONFIG_KEY = "extmem_memories"
# Memories go into a Hugging Face layer's feed-forward slot, so not at its input
FFN_PLACEMENTS = tuple(p for p in PLACEMENTS if p != "input")


class _Context:
    """Token ids and padding of the current forward, shared by the base model and its memories."""

    def __init__(self) -> None:
        self.input_ids: torch.Tensor | None = None  # (B, T) new positions
        self.padding: torch.Tensor | None = None    # (B, T) True at padding, or None
        self.past_ids: torch.Tensor | None = None   # (B, P) earlier ids in cached decoding
        self.history: torch.Tensor | None = None    # (B, P + T)

    def update(self, ids: torch.Tensor | None, mask: torch.Tensor | None, past: int) -> None:
        self.input_ids = ids
        if ids is None:
            self.padding = self.past_ids = self.history = None
            return
        padding = mask[:, -ids.shape[1]:] == 0 if mask is not None and mask.dim() == 2 else None
        self.padding = padding if padding is not None and bool(padding.any()) else None
        continuing = (past and self.history is not None and self.history.shape[1] == past
                      and self.history.shape[0] == ids.shape[0])
        self.past_ids = self.history if continuing else None
        self.history = torch.cat([self.history, ids], dim=1) if continuing else ids


def _capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook of the base model: remember ids, padding and the cache length."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    cache = kwargs.get("past_key_values")
    past = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0
    module._extmem_context.update(ids, kwargs.get("attention_mask"), past)


def _read(owner: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Sum of owner.memories on x (B, T, d), through the FFN's own dropout if it has one."""
    ctx: _Context = owner._extmem_context
    out = None
    for memory in owner.memories:
        dtype = memory.table.weight.dtype
        y = memory(x.to(dtype), input_ids=ctx.input_ids, padding_mask=ctx.padding,
                   past_ids=ctx.past_ids).to(x.dtype)
        out = y if out is None else out + y
    dropout = getattr(owner, "dropout", None)
    return dropout(out) if isinstance(dropout, nn.Dropout) else out


def _mlp_hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
    x = args[0] if args else next(iter(kwargs.values()))
    return output + _read(module, x)


def _bert_output_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """BertOutput(h, x) = LayerNorm(dropout(dense(h)) + x): put the memory into the residual."""
    inputs = dict(zip(("hidden_states", "input_tensor"), args, strict=False)) | kwargs
    x = inputs["input_tensor"]
    inputs["input_tensor"] = x + _read(module, x)
    return (), inputs


class MemoryFFN(nn.Module):
    """`replace_ffn` for a pre-norm MLP slot: the memories alone, on the MLP's input."""

    def __init__(self, context: _Context) -> None:
        super().__init__()
        self.memories = nn.ModuleList()
        self._extmem_context = context

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return _read(self, x)


class MemoryBertOutput(nn.Module):
    """`replace_ffn` for BERT: LayerNorm(dropout(Memory(x)) + x), the FFN's dense layers gone;
    `LayerNorm` keeps its parameter names."""

    def __init__(self, output: nn.Module, context: _Context) -> None:
        super().__init__()
        self.LayerNorm, self.dropout = output.LayerNorm, output.dropout
        self.memories = getattr(output, "memories", nn.ModuleList())
        self._extmem_context = context

    def forward(self, hidden: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(_read(self, x) + x)


def _layers(model: nn.Module) -> list[nn.Module]:
    base = getattr(model, "base_model", model)
    for path in (("h",), ("layers",), ("encoder", "layer")):
        node = base
        for name in path:
            node = getattr(node, name, None)
        if isinstance(node, nn.ModuleList):
            return list(node)
    raise ConfigError(f"add_memory: {type(model).__name__} is not a supported architecture; "
                      "supported: GPT-2, BERT and Llama-family models")


def _context(model: nn.Module) -> _Context:
    base = getattr(model, "base_model", model)
    if not hasattr(base, "_extmem_context"):
        base._extmem_context = _Context()
        base.register_forward_pre_hook(_capture, with_kwargs=True)
    return base._extmem_context


def _slot(layer: nn.Module, placement: str, context: _Context) -> nn.Module:
    """The module that owns this layer's `memories`, rebuilt for the placement."""
    if hasattr(layer, "mlp"):
        mlp = layer.mlp
        if placement == "replace_ffn" and not isinstance(mlp, MemoryFFN):
            new = MemoryFFN(context).train(layer.training)
            new.memories = getattr(mlp, "memories", new.memories)  # keep earlier memories
            layer.mlp = mlp = new
        elif not hasattr(mlp, "memories"):
            mlp.memories, mlp._extmem_context = nn.ModuleList(), context
            mlp.register_forward_hook(_mlp_hook, with_kwargs=True)
        return mlp
    if hasattr(layer, "intermediate") and hasattr(getattr(layer, "output", None), "LayerNorm"):
        output = layer.output
        if placement == "replace_ffn" and not isinstance(output, MemoryBertOutput):
            layer.output = output = MemoryBertOutput(output, context).train(layer.training)
            layer.intermediate = nn.Identity()  # BertOutput's dense layers are dropped
        elif not hasattr(output, "memories"):
            output.memories, output._extmem_context = nn.ModuleList(), context
            output.register_forward_pre_hook(_bert_output_hook, with_kwargs=True)
        return output
    raise ConfigError(f"add_memory: layer {type(layer).__name__} has neither an `mlp` nor a "
                      "BERT `intermediate`/`output` feed-forward block")


def add_memory(model: nn.Module, memory_config: MemoryConfig,
               layers: Sequence[int] | None = None,
               placement: str | None = None, force: bool = False) -> list[Memory]:
    """Insert one memory per layer in `layers` (default: memory_config.layers) at the FFN slot,
    `parallel_ffn` or `replace_ffn` (default: memory_config.placement); returns them.

    One table per layer, or one for all of them with `share_table`. The memories are on the
    model's device, in float32 (inputs are cast; `model.to(dtype)` converts them too, except
    their usage counters, which stay int64 / float32), in the model's train / eval mode, and
    recorded in `model.config`. Unless `force`, a ConfigError first if the tables (and usage
    counters; not the optimizer state of training) would not fit in the memory available
    (`extmem.model.resources`).
    """
    cfg = dataclasses.replace(memory_config,
                              layers=sorted(memory_config.layers if layers is None else layers),
                              placement=placement or memory_config.placement)
    require(cfg.placement in FFN_PLACEMENTS,
            f"add_memory: placement {cfg.placement!r} is not supported in Hugging Face models; "
            f"choose {' or '.join(sorted(FFN_PLACEMENTS))}")
    blocks = _layers(model)
    bad = [i for i in cfg.layers if not 0 <= i < len(blocks)]
    require(not bad, f"add_memory: layers {bad} out of range; this model has layers "
                     f"0..{len(blocks) - 1}")
    hf_config = model.config
    device = next(model.parameters()).device
    if not force:
        need = memory_need(cfg, hf_config.hidden_size, hf_config.vocab_size, "add_memory")
        check_table_memory([need], device, "pass force=True")
    context = _context(model)
    added: list[Memory] = []
    for layer in cfg.layers:
        shared = added[0].table if cfg.share_table and added else None
        memory = Memory(cfg, hf_config.hidden_size, hf_config.vocab_size, layer, table=shared)
        if shared is not None:  # save_pretrained writes the shared table once
            memory._tied_weights_keys = {"table.weight": "table.weight"}
        memory.to(device).train(blocks[layer].training)
        _slot(blocks[layer], cfg.placement, context).memories.append(memory)
        added.append(memory)
    recorded = getattr(hf_config, CONFIG_KEY, None) or []
    setattr(hf_config, CONFIG_KEY, [*recorded, to_dict(cfg)])
    return added


def _checkpoint_tensors(path: Path, names: set[str]) -> dict[str, torch.Tensor]:
    """The tensors `names` from the safetensors file(s) of a save_pretrained directory."""
    import json

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


def load_with_memory(path: str | Path, model_class, **kwargs) -> nn.Module:
    """`model_class.from_pretrained(path, **kwargs)` (an Auto class or an architecture class)
    with the memories recorded in its config rebuilt and their weights loaded."""
    from transformers import AutoConfig
    from transformers.utils import logging

    from extmem.run.checkpoint import unique_state_dict

    path = Path(path)
    config = kwargs.pop("config", None) or AutoConfig.from_pretrained(path)
    specs = getattr(config, CONFIG_KEY, None) or []
    setattr(config, CONFIG_KEY, [])
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # memory weights are "unexpected" to the plain class
    try:
        model = model_class.from_pretrained(path, config=config, **kwargs)
    finally:
        logging.set_verbosity(verbosity)
    for spec in specs:
        add_memory(model, from_dict(MemoryConfig, spec, "extmem_memories"))
    wanted = {name for name in unique_state_dict(model) if ".memories." in name}
    found = _checkpoint_tensors(path, wanted)
    missing = sorted(wanted - set(found))
    if missing:
        raise CheckpointError(f"{path}: the config lists memories but the weights lack "
                              f"{missing[:3]}")
    model.load_state_dict(found, strict=False)
    return model
