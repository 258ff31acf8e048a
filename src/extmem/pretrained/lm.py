"""`PretrainedLM`: a Hugging Face language model with extmem memories, run like extmem's own.

Kim & Jung 2020 ("Large Product Key Memory for Pretrained Language Models") add product-key
memory to a pretrained BERT, beside the FFN (ResM) or in its place, and continue pretraining.
This wrapper lets the extmem tool chain (train, eval, usage, finetune, generate, export) run
such a model: it answers the calls `Transformer` answers (`forward`, `features`, `cfg`,
`memory_modules`, parameter and FLOP accounting), while the weights stay the Hugging Face
model's own (`self.hf`), with the memories at the FFN slots (`extmem.pretrained.inject`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from extmem.config import require
from extmem.decode_cache import DecodeCache
from extmem.errors import ConfigError
from extmem.model.accounting import DEFAULT_MASK_PROB, head_share
from extmem.model.config import ModelConfig
from extmem.model.memory_host import MemoryHost
from extmem.pretrained.inject import add_memory
from extmem.pretrained.source import has_weights, is_causal, load_language_model, read_hf_config

# The families whose FFN is gated (three d x d_ff matrices, as SwiGLU); the rest have two.
GATED_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "olmo", "phi3")


def _first(hf: dict, *names: str, default: int | None = None) -> int | None:
    for name in names:
        if hf.get(name) is not None:
            return hf[name]
    return default


def architecture(hf: dict, source: str) -> dict:
    """The ModelConfig fields that describe a Hugging Face config's architecture."""
    d = _first(hf, "hidden_size", "n_embd", "d_model")
    layers = _first(hf, "num_hidden_layers", "n_layer")
    heads = _first(hf, "num_attention_heads", "n_head")
    positions = _first(hf, "max_position_embeddings", "n_positions", default=2048)
    if None in (d, layers, heads) or not hf.get("vocab_size"):
        raise ConfigError(f"{source}: config.json lacks the width, layers, heads or vocab_size")
    causal = is_causal(hf, source)
    return {"d_model": d, "n_layers": layers, "n_heads": heads,
            "d_ff": _first(hf, "intermediate_size", "n_inner", default=0) or 0,
            "ffn": "swiglu" if hf["model_type"] in GATED_TYPES else "gelu",
            "causal": causal, "max_seq_len": positions, "vocab_size": hf["vocab_size"],
            "tie_embeddings": bool(hf.get("tie_word_embeddings", True))}


def check_architecture(cfg: ModelConfig, hf: dict, source: str) -> None:
    """The run's [model] fields must describe the checkpoint they will load."""
    for name, value in architecture(hf, source).items():
        require(getattr(cfg, name) == value,
                f"model.{name}: {getattr(cfg, name)!r} but the pretrained checkpoint {source} "
                f"has {value!r}; set model.{name} = {value!r} (extmem augment HF_DIR writes "
                "these fields)")


class PretrainedLM(MemoryHost):
    """Token ids (B, T) -> logits (B, T, V) through a Hugging Face masked or causal LM."""

    def __init__(self, cfg: ModelConfig, hf_model: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.hf = hf_model
        self.created_tensors: list[str] = []  # head tensors the checkpoint lacked (source.py)
        for memory in cfg.memories:
            add_memory(self.hf, memory, force=True)  # the table check ran in build_model

    @property
    def embedding_prefixes(self) -> tuple[str, ...]:
        """Parameter-name prefixes of the embeddings and the LM head (accounting), the way
        `embed.` and `lm_head.` are for `Transformer`."""
        base = self.hf.base_model
        heads = [f"hf.{name}." for name, child in self.hf.named_children() if child is not base]
        base_name = self.hf.base_model_prefix
        embeddings = [f"hf.{base_name}.{name}." for name, module in base.named_modules()
                      if isinstance(module, nn.Embedding) and ".memories." not in f".{name}."]
        return tuple(heads + embeddings)

    def flops_per_token(self, seq_len: int,
                        mask_prob: float = DEFAULT_MASK_PROB) -> dict[str, int]:
        """Forward FLOPs per token as `extmem.model.flops_per_token` counts them (multiply-add
        = 2; attention at the average context: T/2 causal, T bidirectional; the head, BERT's
        transform included, at every position causal, at the `mask_prob` share masked)."""
        cfg = self.cfg
        d = cfg.d_model
        context = seq_len / 2 if cfg.causal else seq_len
        attention = 2 * 4 * d * d + int(2 * 2 * context * d)
        ffn = 2 * d * (cfg.d_ff or 4 * d) * (3 if cfg.ffn == "swiglu" else 2)
        replaced = {layer for m in cfg.memories if m.placement == "replace_ffn" for layer in m.layers}
        core = cfg.n_layers * attention + (cfg.n_layers - len(replaced)) * ffn
        memory = sum(m.flops_per_token() for _, m in self.memory_modules())
        head = 2 * d * cfg.vocab_size + (0 if cfg.causal else 2 * d * d)  # BERT's transform
        lm_head = int(head * head_share(cfg.causal, mask_prob))
        return {"core": core, "memory": memory, "lm_head": lm_head,
                "total": core + memory + lm_head}

    def _check_length(self, length: int) -> None:
        if length > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {length} exceeds model.max_seq_len="
                             f"{self.cfg.max_seq_len}")

    @staticmethod
    def _attention_mask(padding_mask: torch.Tensor | None) -> torch.Tensor | None:
        return None if padding_mask is None else (~padding_mask).long()  # (B, T) 1 = keep

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM / MLM head (the model's one child besides its base model; BERT's `cls`
        includes the transform) on hidden states (..., d) -> logits (..., V)."""
        base = self.hf.base_model
        heads = [child for _, child in self.hf.named_children() if child is not base]
        return heads[0](hidden)

    def forward(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None,
                cache: DecodeCache | None = None,
                select: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T); padding_mask (B, T) True at padding -> logits (B, T, V).

        With a `cache` (causal models), input_ids are the new positions: the model reruns
        the whole history (no key/value cache through the wrapper) and returns the new
        positions' logits; the cache's token history is updated in place. `select` (B, T)
        bool: logits only at those positions, (N, V) (masked LM's predicted positions)."""
        if select is not None:
            hidden = self.features(input_ids, padding_mask)  # (B, T, d)
            return self.head(hidden[select])  # (N, V)
        if cache is not None:
            if not self.cfg.causal:
                raise ValueError("a DecodeCache needs a causal model (model.causal = true)")
            t = input_ids.shape[1]
            padding = cache.key_padding(padding_mask, t)
            full = (input_ids if cache.token_ids is None
                    else torch.cat([cache.token_ids, input_ids], dim=1))  # (B, T_past + T)
            logits = self(full, padding)[:, -t:]
            cache.remember(input_ids, padding_mask)
            return logits
        self._check_length(input_ids.shape[1])
        extra = {"use_cache": False} if self.cfg.causal else {}
        out = self.hf(input_ids=input_ids, attention_mask=self._attention_mask(padding_mask),
                      **extra)
        return out.logits  # (B, T, V)

    def features(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None,
                 cache: DecodeCache | None = None) -> torch.Tensor:
        """The base model's last hidden states (B, T, d), which classification heads read."""
        if cache is not None:
            raise ValueError("features: no DecodeCache through a Hugging Face model")
        self._check_length(input_ids.shape[1])
        extra = {"use_cache": False} if self.cfg.causal else {}
        out = self.hf.base_model(input_ids=input_ids,
                                 attention_mask=self._attention_mask(padding_mask), **extra)
        return out.last_hidden_state


def build_pretrained(cfg: ModelConfig, base_dir: Path) -> PretrainedLM:
    """The model `cfg` describes, from the checkpoint directory `base_dir`: its weights when it
    has them and `cfg.pretrained_init` is "weights", else a fresh model of its shape (a run's
    own copy holds only the config; its checkpoint supplies the weights). The tensors that
    loading created (a missing MLM head) are in `model.created_tensors`."""
    hf = read_hf_config(base_dir)
    check_architecture(cfg, hf, str(base_dir))
    init = "weights" if cfg.pretrained_init == "weights" and has_weights(base_dir) else "random"
    loaded = load_language_model(base_dir, init)
    model = PretrainedLM(cfg, loaded.model)
    model.created_tensors = loaded.created
    return model
