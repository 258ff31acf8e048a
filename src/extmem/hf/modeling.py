"""Hugging Face model classes around our `Transformer` (attribute `model`, so weights are
`model.<our parameter name>`): causal LM, masked LM and sequence classification.

Weights created here are our own initialisation (`Transformer.__init__`); HF's `_init_weights`
only fills what a checkpoint did not hold (a new classification head; trunk tensors such as
the non-persistent rotary tables, copied from a freshly built reference `Transformer`, so every
lookup / readout keeps its own initialisation). Tied tensors (embedding and LM head,
tables shared by several layers) are found by identity and declared to HF, so
`save_pretrained` writes each once and `from_pretrained` ties them again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import (
    CausalLMOutputWithPast,
    MaskedLMOutput,
    SequenceClassifierOutput,
)

from extmem.hf.cache import ExtmemCache
from extmem.hf.configuration import ExtmemConfig
from extmem.model.transformer import DecodeCache, Transformer

IGNORE_INDEX = -100  # HF convention for positions without a label


def _shared_names(module: nn.Module, prefix: str) -> dict[str, str]:
    """{later name: first name} for parameters that are one tensor under several names."""
    first: dict[int, str] = {}
    tied = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in first:
            tied[f"{prefix}{name}"] = f"{prefix}{first[id(param)]}"
        else:
            first[id(param)] = name
    return tied


def _padding(attention_mask: torch.Tensor | None, t: int) -> torch.Tensor | None:
    """HF attention_mask (B, T_total), 1 = token -> our padding mask (B, t) for the newest t
    positions, True at padding; None when nothing is padded (the fast attention path). While
    `torch.compile` traces, the mask is kept as it is: testing it is data-dependent control
    flow (a graph break), and an all-False mask gives the same result."""
    if attention_mask is None:
        return None
    padding = attention_mask[:, -t:] == 0
    if torch.compiler.is_compiling():
        return padding
    return padding if bool(padding.any()) else None


def _mean_loss(losses: torch.Tensor, labels: torch.Tensor, num_items: int | None) -> torch.Tensor:
    """Mean over labelled positions, or sum / num_items_in_batch (what HF Trainer passes so
    that gradient accumulation weighs every token alike)."""
    total = losses.sum()
    if num_items is not None:
        return total / num_items
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


class ExtmemPreTrainedModel(PreTrainedModel):
    config_class = ExtmemConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]  # noqa: RUF012 (HF class attribute)
    _supports_sdpa = True  # our attention always runs torch's scaled_dot_product_attention

    def __init__(self, config: ExtmemConfig) -> None:
        super().__init__(config)
        self.model = Transformer(config.model_config)
        if not next(self.model.parameters()).is_meta:
            # built for real (not by from_pretrained on the meta device): keep our own init
            for tensor in [*self.model.parameters(), *self.model.buffers()]:
                tensor._is_hf_initialized = True
        self._tied_weights_keys = _shared_names(self.model, "model.")
        self._reference: list[Transformer] = []  # see _reference_trunk (a list: no submodule)

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict[str, str]:
        return dict(self._tied_weights_keys)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if module is getattr(self, "score", None):  # the classification head
            init.normal_(module.weight, mean=0.0, std=self.config.model["init_std"])
            if module.bias is not None:
                init.zeros_(module.bias)
            return
        names = {id(m): name for name, m in self.model.named_modules()}
        if id(module) not in names:
            return
        own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        todo = [(n, t) for n, t in own if not getattr(t, "_is_hf_initialized", False)]
        if todo:  # not in the checkpoint: take our own initialisation of this tensor
            reference = self._reference_trunk().get_submodule(names[id(module)])
            for name, tensor in todo:
                init.copy_(tensor, getattr(reference, name))

    def _reference_trunk(self) -> Transformer:
        """A freshly initialised Transformer (on the CPU, without touching the global RNG),
        built once per `initialize_weights` pass."""
        if not self._reference:
            with torch.random.fork_rng(devices=[]), torch.device("cpu"):
                self._reference.append(Transformer(self.config.model_config))
        return self._reference[0]

    def initialize_weights(self) -> None:
        try:
            super().initialize_weights()
        finally:
            self._reference.clear()

    def _run(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
             cache: DecodeCache | None = None) -> torch.Tensor:
        """Final-normed hidden states (B, T, d') of the newest positions."""
        if input_ids is None:
            raise ValueError(f"{type(self).__name__} reads token ids: pass input_ids "
                             "(inputs_embeds are not supported)")
        return self.model.features(input_ids, _padding(attention_mask, input_ids.shape[1]), cache)


class ExtmemForCausalLM(ExtmemPreTrainedModel, GenerationMixin):
    """Decoder LM. `generate()` decodes with an `ExtmemCache` (our DecodeCache: keys/values and
    the token history that token / n-gram lookups read) returned as `past_key_values`."""

    def __init__(self, config: ExtmemConfig) -> None:
        if not config.model["causal"]:
            raise ValueError("ExtmemForCausalLM needs a causal model (model.causal = true); "
                             "load this masked-LM encoder with AutoModelForMaskedLM")
        super().__init__(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.model.lm_head

    @property
    def supports_cache(self) -> bool:
        """Sequence-AltUp predicts positions from earlier ones inside a group and cannot decode
        one position at a time: generate() then reruns the whole sequence each step."""
        altup = self.config.model.get("altup")
        return not (altup and altup.get("mode") == "sequence")

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # we create our own cache in forward(); HF's DynamicCache cannot hold it

    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                past_key_values: DecodeCache | None = None,
                labels: torch.Tensor | None = None, use_cache: bool | None = None,
                logits_to_keep: int = 0, return_dict: bool | None = None,
                **kwargs) -> CausalLMOutputWithPast | tuple:
        """input_ids (B, T) (only the new positions when past_key_values holds a cache);
        attention_mask (B, T_past + T), 1 at tokens; labels (B, T), shifted inside."""
        if use_cache is None:
            use_cache = self.config.use_cache and labels is None
        use_cache = use_cache and self.supports_cache
        cache = past_key_values
        if cache is not None and not isinstance(cache, DecodeCache):
            raise TypeError(f"past_key_values must be an ExtmemCache, got {type(cache).__name__}")
        if cache is None and use_cache:
            cache = ExtmemCache()
        hidden = self._run(input_ids, attention_mask, cache)  # (B, T, d)
        logits = self.model.lm_head(hidden[:, -logits_to_keep:])  # (B, T or keep, V)
        loss = None
        if labels is not None:
            shifted = labels[:, 1:].to(logits.device)  # (B, T-1): position t predicts t+1
            losses = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), shifted.flatten(),
                                     ignore_index=IGNORE_INDEX, reduction="none")
            loss = _mean_loss(losses, shifted, kwargs.get("num_items_in_batch"))
        out = CausalLMOutputWithPast(loss=loss, logits=logits,
                                     past_key_values=cache if use_cache else None)
        return out if return_dict is not False else out.to_tuple()

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor,
                                      past_key_values: DecodeCache | None = None,
                                      attention_mask: torch.Tensor | None = None,
                                      use_cache: bool | None = None, **kwargs) -> dict:
        """Feed only the positions the cache has not seen (all of them without a cache)."""
        if isinstance(past_key_values, DecodeCache) and past_key_values.length:
            input_ids = input_ids[:, past_key_values.length:]
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
                  "past_key_values": past_key_values, "use_cache": use_cache}
        if "logits_to_keep" in kwargs:
            inputs["logits_to_keep"] = kwargs["logits_to_keep"]
        return inputs


class ExtmemForMaskedLM(ExtmemPreTrainedModel):
    """Masked-LM encoder (model.causal = false): logits at every position."""

    def __init__(self, config: ExtmemConfig) -> None:
        super().__init__(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.model.lm_head

    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, return_dict: bool | None = None,
                **kwargs) -> MaskedLMOutput | tuple:
        """input_ids, attention_mask, labels (B, T); labels are -100 where nothing is masked."""
        logits = self.model.lm_head(self._run(input_ids, attention_mask))  # (B, T, V)
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            losses = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                                     ignore_index=IGNORE_INDEX, reduction="none")
            loss = _mean_loss(losses, labels, kwargs.get("num_items_in_batch"))
        out = MaskedLMOutput(loss=loss, logits=logits)
        return out if return_dict is not False else out.to_tuple()


class ExtmemForSequenceClassification(ExtmemPreTrainedModel):
    """A linear head `score` on one vector per sequence: the last real token of a causal
    model (it has seen the whole text), the mean over real tokens of an encoder."""

    def __init__(self, config: ExtmemConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.score = nn.Linear(self.model.lm_head.in_features, config.num_labels, bias=False)
        self.post_init()

    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, return_dict: bool | None = None,
                **kwargs) -> SequenceClassifierOutput | tuple:
        """input_ids, attention_mask (B, T); labels (B,) class ids (or (B, L) floats for
        regression / multi-label, following config.problem_type) -> logits (B, L)."""
        hidden = self._run(input_ids, attention_mask)  # (B, T, d)
        mask = (torch.ones_like(input_ids) if attention_mask is None
                else attention_mask.to(hidden.device))  # (B, T), 1 at tokens
        if self.config.model["causal"]:
            positions = torch.arange(mask.shape[1], device=hidden.device)
            last = (positions * mask).argmax(-1)  # (B,) last real token, any padding side
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        logits = self.score(pooled)  # (B, L)
        loss = None if labels is None else self._loss(logits, labels.to(logits.device))
        out = SequenceClassifierOutput(loss=loss, logits=logits)
        return out if return_dict is not False else out.to_tuple()

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.config.problem_type is None:
            single = self.num_labels > 1 and labels.dtype in (torch.long, torch.int)
            self.config.problem_type = ("regression" if self.num_labels == 1 else
                                        "single_label_classification" if single
                                        else "multi_label_classification")
        if self.config.problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1).float(), labels.squeeze(-1).float())
        if self.config.problem_type == "single_label_classification":
            return F.cross_entropy(logits.float(), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
