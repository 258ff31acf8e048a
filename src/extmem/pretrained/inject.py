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

The memories are recorded in `model.config.extmem_memories` (a list of MemoryConfig dicts), and
`save_pretrained` writes `config.json` with `model_type = "extmem_augmented"` (the base model's
type under `extmem_base_model_type`, its fields unchanged). So a saved model never loads
without its memories unnoticed (docs/huggingface.md):

- `load_with_memory(DIR, AutoModelFor... or the architecture class)` rebuilds them;
- after `import extmem`, `AutoModelForCausalLM.from_pretrained(DIR)` (MaskedLM,
  SequenceClassification alike) does the same (`extmem.hf.augmented`);
- without extmem, the Auto classes refuse the unknown model type `extmem_augmented`;
- the plain class (`GPT2LMHeadModel.from_pretrained(DIR)`) loads the base model without the
  memories, and transformers warns that the model types differ (after `import extmem` the
  warning names the fix) and lists the memory weights as UNEXPECTED.

The memories of one FFN slot live in a `MemoryList` (an nn.Module, not an nn.ModuleList), so
PEFT's `modules_to_save=["memories"]` can wrap it; `memory_module_names(model)` names each
memory for `modules_to_save` instead.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from extmem.config import from_dict, require, to_dict
from extmem.errors import ConfigError
from extmem.memory.config import PLACEMENTS, MemoryConfig
from extmem.memory.module import Memory
from extmem.memory.table_init import tables_deferred
from extmem.model.resources import check_table_memory, memory_need
from extmem.pretrained.names import AUGMENTED_TYPE, BASE_TYPE_KEY, LOAD_KEY, VERSION_KEY

CONFIG_KEY = "extmem_memories"
# Memories go into a Hugging Face layer's feed-forward slot, so not at its input
FFN_PLACEMENTS = tuple(p for p in PLACEMENTS if p != "input")


def _new_padding(mask: torch.Tensor | None, t: int) -> torch.Tensor | None:
    """HF attention_mask (B, T_total), 1 = token -> (B, t) True at padding of the newest t
    positions; None when nothing is padded. While `torch.compile` traces, the mask is kept as
    it is: testing it is data-dependent control flow (a graph break), and an all-False mask
    gives the same result (as `extmem.hf.modeling._padding`)."""
    if mask is None or mask.dim() != 2:
        return None
    padding = mask[:, -t:] == 0
    if torch.compiler.is_compiling():
        return padding
    return padding if bool(padding.any()) else None


def _joined_padding(past: torch.Tensor | None, new: torch.Tensor | None, past_len: int,
                    ids: torch.Tensor) -> torch.Tensor | None:
    """Padding (B, P + T) of the history from the past's (B, P) and the new positions' (B, T),
    either None where nothing is padded; None when neither is padded."""
    if past is None and new is None:
        return None
    b, t = ids.shape
    if past is None:
        past = torch.zeros(b, past_len, dtype=torch.bool, device=ids.device)
    if new is None:
        new = torch.zeros(b, t, dtype=torch.bool, device=ids.device)
    return torch.cat([past, new], dim=1)


class _Context:
    """Token ids and padding of the current forward, shared by the base model and its memories."""

    def __init__(self) -> None:
        self.input_ids: torch.Tensor | None = None  # (B, T) new positions
        self.padding: torch.Tensor | None = None    # (B, T) True at padding, or None
        self.past_ids: torch.Tensor | None = None   # (B, P) earlier ids in cached decoding
        self.past_padding: torch.Tensor | None = None  # (B, P) True at their padding, or None
        self.history: torch.Tensor | None = None    # (B, P + T)
        self.history_padding: torch.Tensor | None = None  # (B, P + T) or None
        # per memory (by id), what a readout that mixes positions keeps between decoding
        # steps (Engram's convolution inputs); emptied whenever a sequence starts
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def update(self, ids: torch.Tensor | None, mask: torch.Tensor | None, past: int) -> None:
        self.input_ids = ids
        if ids is None:
            self.padding = self.past_ids = self.history = None
            self.past_padding = self.history_padding = None
            self.states = {}
            return
        self.padding = _new_padding(mask, ids.shape[1])
        continuing = (past and self.history is not None and self.history.shape[1] == past
                      and self.history.shape[0] == ids.shape[0])
        self.past_ids = self.history if continuing else None
        self.past_padding = self.history_padding if continuing else None
        if not continuing:
            self.states = {}
        self.history = torch.cat([self.history, ids], dim=1) if continuing else ids
        self.history_padding = (_joined_padding(self.past_padding, self.padding, past, ids)
                                if continuing else self.padding)


def _capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook of the base model: remember ids, padding and the cache length."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    cache = kwargs.get("past_key_values")
    past = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0
    module._extmem_context.update(ids, kwargs.get("attention_mask"), past)


class MemoryList(nn.Module):
    """The memories of one FFN slot, summed. Its children are named "0", "1", ... as in an
    nn.ModuleList (weights at `...memories.N.`), but it is an nn.Module with a forward, which
    PEFT's `modules_to_save` can wrap (it refuses an nn.ModuleList). The context is passed at
    each call, never stored, so a copy of the list (PEFT's) reads the current forward's ids."""

    def append(self, memory: Memory) -> None:
        self.add_module(str(len(self._modules)), memory)

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, index: int) -> nn.Module:
        return list(self._modules.values())[index]

    def forward(self, x: torch.Tensor, ctx: _Context) -> torch.Tensor:
        """x (B, T, d) -> the sum of the memories' outputs (B, T, d), in x's dtype."""
        out = None
        for memory in self:  # a Memory, or PEFT's wrapper of one (modules_to_save)
            dtype = memory.table.weight.dtype
            y = memory(x.to(dtype), input_ids=ctx.input_ids, padding_mask=ctx.padding,
                       past_ids=ctx.past_ids, past_padding=ctx.past_padding,
                       state=ctx.states.setdefault(id(memory), {})).to(x.dtype)
            out = y if out is None else out + y
        return out


def _read(owner: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Sum of owner.memories on x (B, T, d), through the FFN's own dropout if it has one."""
    out = owner.memories(x, owner._extmem_context)
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
        self.memories = MemoryList()
        self._extmem_context = context

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return _read(self, x)


class MemoryBertOutput(nn.Module):
    """`replace_ffn` for BERT: LayerNorm(dropout(Memory(x)) + x), the FFN's dense layers gone;
    `LayerNorm` keeps its parameter names."""

    def __init__(self, output: nn.Module, context: _Context) -> None:
        super().__init__()
        self.LayerNorm, self.dropout = output.LayerNorm, output.dropout
        self.memories = getattr(output, "memories", MemoryList())
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
            mlp.memories, mlp._extmem_context = MemoryList(), context
            mlp.register_forward_hook(_mlp_hook, with_kwargs=True)
        return mlp
    if hasattr(layer, "intermediate") and hasattr(getattr(layer, "output", None), "LayerNorm"):
        output = layer.output
        if placement == "replace_ffn" and not isinstance(output, MemoryBertOutput):
            layer.output = output = MemoryBertOutput(output, context).train(layer.training)
            layer.intermediate = nn.Identity()  # BertOutput's dense layers are dropped
        elif not hasattr(output, "memories"):
            output.memories, output._extmem_context = MemoryList(), context
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
        if not tables_deferred():  # a deferred (meta) table is drawn per rank by the sharding
            memory.to(device)      # step, and the built model is moved after (run/session.py)
        memory.train(blocks[layer].training)
        _slot(blocks[layer], cfg.placement, context).memories.append(memory)
        added.append(memory)
    recorded = getattr(hf_config, CONFIG_KEY, None) or []
    setattr(hf_config, CONFIG_KEY, [*recorded, to_dict(cfg)])
    hf_config.__class__ = _saving_class(type(hf_config))
    return added


_SAVING_CLASSES: dict[type, type] = {}


def _augmented_json(self, use_diff: bool = True) -> str:
    """config.json of a model with memories: the base config's JSON with `model_type` =
    "extmem_augmented", the base model type under `extmem_base_model_type` and how to load it."""
    import extmem

    base = type(self).__mro__[1]
    if not getattr(self, CONFIG_KEY, None):  # no memory (yet): the base model's config.json
        return base.to_json_string(self, use_diff)
    data = json.loads(base.to_json_string(self, use_diff))
    data[BASE_TYPE_KEY] = data.get("model_type") or base.model_type
    data["model_type"] = AUGMENTED_TYPE
    arch = (data.get("architectures") or ["the architecture class"])[0]
    data[LOAD_KEY] = (f"saved after extmem.hf.add_memory (pip install \"extmem[hf]\"): load with "
                      f"extmem.hf.load_with_memory(DIR, {arch}), or after `import extmem` with "
                      "the transformers Auto class (e.g. AutoModelForCausalLM.from_pretrained(DIR)"
                      f"); {arch}.from_pretrained(DIR) alone drops the memories")
    data[VERSION_KEY] = extmem.__version__
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _rebuild_config(base: type, state: dict) -> object:
    """Unpickle a config of `_saving_class(base)` (the class is made at run time)."""
    config = _saving_class(base).__new__(_saving_class(base))
    config.__dict__.update(state)
    return config


def _reduce_config(self) -> tuple:
    return _rebuild_config, (type(self).__mro__[1], dict(self.__dict__))


def _saving_class(base: type) -> type:
    """`base` (e.g. GPT2Config) whose `save_pretrained` writes the config.json of a model with
    memories (`_augmented_json`); same name, attributes and behaviour otherwise (to_dict, and so
    PEFT and generate, still see the base model type)."""
    if base in _SAVING_CLASSES.values():
        return base
    if base not in _SAVING_CLASSES:
        _SAVING_CLASSES[base] = type(base.__name__, (base,), {
            "__qualname__": base.__qualname__, "__doc__": base.__doc__,
            "to_json_string": _augmented_json, "__reduce__": _reduce_config})
    return _SAVING_CLASSES[base]


def split_config(config) -> tuple[object, list[MemoryConfig]]:
    """A saved config -> (a copy of the base architecture's config without memories, the
    memories it records). Reads both the `extmem_augmented` config.json that save_pretrained
    writes now and a base config that only lists `extmem_memories` (older saves)."""
    if getattr(config, "model_type", None) == AUGMENTED_TYPE:
        config = config.base_config()  # an ExtmemAugmentedConfig (extmem.hf.configuration)
    else:
        config = copy.deepcopy(config)
    specs = getattr(config, CONFIG_KEY, None) or []
    setattr(config, CONFIG_KEY, [])
    return config, [from_dict(MemoryConfig, spec, CONFIG_KEY) for spec in specs]


def memory_module_names(model: nn.Module) -> list[str]:
    """The qualified names of the memories that `add_memory` put into `model` (e.g.
    `transformer.h.1.mlp.memories.0`), for PEFT: `LoraConfig(..., modules_to_save=
    memory_module_names(model))` trains each memory in full beside the adapter and saves it
    with the adapter (README, "LoRA + trainable memory (PEFT)"). Call it before
    `get_peft_model`. A ConfigError for a table shared by several layers (`share_table`):
    PEFT copies each memory, which would untie the table."""
    names, tables = [], set()
    for name, module in model.named_modules():
        if isinstance(module, Memory):
            if id(module.table) in tables:
                raise ConfigError(f"memory_module_names: {name} shares its table with another "
                                  "layer (share_table); PEFT's modules_to_save would copy and "
                                  "untie it. Use one table per layer to train it with PEFT")
            tables.add(id(module.table))
            names.append(name)
    return names
