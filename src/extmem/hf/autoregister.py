"""Register the extmem classes with transformers' Auto classes, without slowing `import extmem`.

Importing `PreTrainedModel` costs seconds, so `import extmem` only installs an import hook
(no transformers import, nothing to find when it is absent). The registration runs when
transformers' Auto machinery is first imported (`AutoConfig`, `AutoModelFor...`), or at once if
it already is: after `import extmem`, in either order, `AutoModelForCausalLM.from_pretrained(DIR)`
knows `model_type = "extmem"` (an `extmem export`) and `model_type = "extmem_augmented"` (a
Hugging Face model saved after `extmem.hf.add_memory`: loaded with its memories rebuilt).

Without `import extmem`, transformers refuses both model types ("model type `extmem` ... does
not recognize this architecture"): nothing of ours runs then, so the name of the model type and
the `extmem_load` line of `config.json` are the message. A plain architecture class
(`GPT2LMHeadModel.from_pretrained`) loads an `extmem_augmented` directory without its memories
and warns that the model types differ; after `import extmem` that warning also names the fix.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
import warnings
from types import ModuleType

from extmem.pretrained.names import AUGMENTED_TYPE

CONFIG_AUTO = "transformers.models.auto.configuration_auto"
MODEL_AUTO = "transformers.models.auto.modeling_auto"
PLAIN_LOAD_HINT = (
    "extmem: this directory was saved after extmem.hf.add_memory and the class loading it "
    "drops its memories (their weights are the UNEXPECTED keys). Load it with "
    "extmem.hf.load_with_memory(DIR, <this class>), or after `import extmem` with "
    "AutoModelForCausalLM / AutoModelForMaskedLM / AutoModelForSequenceClassification"
    ".from_pretrained(DIR).")


def register_config() -> None:
    from transformers.models.auto.configuration_auto import AutoConfig  # (fully imported here)

    from extmem.hf.configuration import ExtmemAugmentedConfig, ExtmemConfig
    for config in (ExtmemConfig, ExtmemAugmentedConfig):
        AutoConfig.register(config.model_type, config, exist_ok=True)


def register_models() -> None:
    from transformers.models.auto.modeling_auto import (
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
    )

    from extmem.hf.augmented import (
        ExtmemAugmentedForCausalLM,
        ExtmemAugmentedForMaskedLM,
        ExtmemAugmentedForSequenceClassification,
    )
    from extmem.hf.configuration import ExtmemAugmentedConfig, ExtmemConfig
    from extmem.hf.modeling import (
        ExtmemForCausalLM,
        ExtmemForMaskedLM,
        ExtmemForSequenceClassification,
    )
    register_config()
    for auto, model, augmented in (
            (AutoModelForCausalLM, ExtmemForCausalLM, ExtmemAugmentedForCausalLM),
            (AutoModelForMaskedLM, ExtmemForMaskedLM, ExtmemAugmentedForMaskedLM),
            (AutoModelForSequenceClassification, ExtmemForSequenceClassification,
             ExtmemAugmentedForSequenceClassification)):
        auto.register(ExtmemConfig, model, exist_ok=True)
        auto.register(ExtmemAugmentedConfig, augmented, exist_ok=True)


class _PlainLoadHint(logging.Filter):
    """Adds PLAIN_LOAD_HINT to transformers' warning "You are using a model of type
    `extmem_augmented` to instantiate a model of type `gpt2`" (a plain architecture class
    loading a directory saved after add_memory); every other record passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        if f"model of type `{AUGMENTED_TYPE}` to instantiate" in message:
            record.msg = f"{message}\n{PLAIN_LOAD_HINT}"
        return True


_ACTIONS = {CONFIG_AUTO: register_config, MODEL_AUTO: register_models}


def _register(name: str) -> None:
    """Never let our registration break the user's own use of transformers."""
    try:
        _ACTIONS[name]()
    except Exception as exc:  # noqa: BLE001 (an incompatible transformers must not break it)
        warnings.warn(f"extmem could not register its models with transformers: {exc}",
                      stacklevel=2)


class _Loader(importlib.abc.Loader):
    """Runs the real loader, then our registration for that module."""

    def __init__(self, inner: importlib.abc.Loader, name: str) -> None:
        self.inner, self.name = inner, name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        _register(self.name)

    def __getattr__(self, name: str):  # get_source, is_package, ... of the real loader
        return getattr(self.inner, name)


class _AutoHook(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path, target=None) -> importlib.machinery.ModuleSpec | None:
        if name not in _ACTIONS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, name)
                return spec
        return None


def install() -> None:
    """Register now for what transformers has already imported; hook the rest; and hint at the
    fix when a plain class loads an add_memory directory (a filter on the logger transformers'
    configuration module writes to: creating it imports nothing)."""
    if not any(isinstance(finder, _AutoHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AutoHook())
    config_logger = logging.getLogger("transformers.configuration_utils")
    if not any(isinstance(f, _PlainLoadHint) for f in config_logger.filters):
        config_logger.addFilter(_PlainLoadHint())
    for name in _ACTIONS:
        if name in sys.modules:
            _register(name)
