"""Hugging Face `transformers` integration (extra `hf`).

- `ExtmemConfig` and `ExtmemForCausalLM` / `ExtmemForMaskedLM` /
  `ExtmemForSequenceClassification`, registered with the Auto classes on `import extmem`;
- `export_run`: a run directory -> a `from_pretrained` directory (`extmem export --format hf`);
- `add_memory` / `load_with_memory`: our memories inside HF GPT-2, BERT and Llama-family models;
  a model saved after `add_memory` also loads with the Auto classes after `import extmem`;
- `memory_module_names`: the memories for PEFT's `modules_to_save` (LoRA + trainable memory).

Names are imported on first use, so `import extmem.hf` does not import transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ExtmemConfig": "extmem.hf.configuration",
    "ExtmemCache": "extmem.hf.cache",
    "ExtmemForCausalLM": "extmem.hf.modeling",
    "ExtmemForMaskedLM": "extmem.hf.modeling",
    "ExtmemForSequenceClassification": "extmem.hf.modeling",
    "export_run": "extmem.hf.export",
    "wrap_tokenizer": "extmem.hf.export",
    "add_memory": "extmem.pretrained.inject",
    "load_with_memory": "extmem.hf.saved",
    "memory_module_names": "extmem.pretrained.inject",
}

__all__ = sorted([*_EXPORTS, "require_transformers"])


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'extmem.hf' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def require_transformers(command: str) -> None:
    """Raise a one-line ExtmemError naming the install command when transformers is absent."""
    from extmem.errors import ExtmemError
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ExtmemError(f"{command} needs Hugging Face transformers, which is not installed; "
                          'install it with: pip install -c constraints.txt -e ".[hf]"') from None
