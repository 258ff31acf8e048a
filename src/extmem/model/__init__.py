"""The transformer (decoder LM / masked-LM encoder), its config and accounting."""

from extmem.model.accounting import flops_per_token, parameter_counts
from extmem.model.config import ModelConfig
from extmem.model.transformer import DecodeCache, Transformer

__all__ = ["DecodeCache", "ModelConfig", "Transformer", "flops_per_token", "parameter_counts"]
