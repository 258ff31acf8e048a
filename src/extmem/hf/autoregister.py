"""Register the extmem classes with transformers' Auto classes, without slowing `import extmem`.

Importing `PreTrainedModel` costs seconds, so `import extmem` only installs an import hook
(no transformers import, nothing to find when it is absent). The registration runs when
transformers' Auto machinery is first imported (`AutoConfig`, `AutoModelFor...`), or at once if
it already is: after `import extmem`, in either order, `AutoModelForCausalLM.from_pretrained(DIR)`
knows `model_type = "extmem"`.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

CONFIG_AUTO = "transformers.models.auto.configuration_auto"
MODEL_AUTO = "transformers.models.auto.modeling_auto"


def register_config() -> None:
    from transformers.models.auto.configuration_auto import AutoConfig  # (fully imported here)

    from extmem.hf.configuration import ExtmemConfig
    AutoConfig.register(ExtmemConfig.model_type, ExtmemConfig, exist_ok=True)


def register_models() -> None:
    from transformers.models.auto.modeling_auto import (
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
    )

    from extmem.hf.configuration import ExtmemConfig
    from extmem.hf.modeling import (
        ExtmemForCausalLM,
        ExtmemForMaskedLM,
        ExtmemForSequenceClassification,
    )
    register_config()
    for auto, model in ((AutoModelForCausalLM, ExtmemForCausalLM),
                        (AutoModelForMaskedLM, ExtmemForMaskedLM),
                        (AutoModelForSequenceClassification, ExtmemForSequenceClassification)):
        auto.register(ExtmemConfig, model, exist_ok=True)


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
    """Register now for what transformers has already imported; hook the rest."""
    if not any(isinstance(finder, _AutoHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AutoHook())
    for name in _ACTIONS:
        if name in sys.modules:
            _register(name)
