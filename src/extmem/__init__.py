"""extmem: external memory for transformers.

Implements "The Power of External Memory in Increasing Predictive Model Capacity" (lookups x
readouts, AltUp) and "Large Product Key Memory for Pretrained Language Models" (product-key
memory in pretrained LMs, usage metrics, dense initialisation, ResM placement).
"""

from extmem.hf.autoregister import install as _install_hf_autoregister
from extmem.memory import Memory, MemoryConfig, ProductKeyConfig
from extmem.model import ModelConfig, Transformer, flops_per_token, parameter_counts

# Hugging Face Auto classes learn model_type "extmem" when transformers' Auto machinery is
# imported (an import hook: no transformers import here, no cost when it is not installed).
_install_hf_autoregister()

__version__ = "0.1.0"
__all__ = [
           "Memory",
           "MemoryConfig",
           "ModelConfig",
           "ProductKeyConfig",
           "Transformer",
           "__version__",
           "flops_per_token",
           "parameter_counts",
]
