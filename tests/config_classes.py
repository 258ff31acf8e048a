"""The config dataclasses that tests check field by field (tests/test_config_literals.py,
tests/test_config_finite.py): how to build a valid instance of each, and `discover`, which finds
every config dataclass in the package so that a new one cannot go unchecked."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any

import extmem
from extmem.altup.config import AltUpConfig
from extmem.bench.capacity import CapacityBenchConfig
from extmem.bench.engram_prefetch import EngramPrefetchBenchConfig
from extmem.bench.kernels import KernelsBenchConfig
from extmem.bench.model import ModelBenchConfig
from extmem.bench.optimizer import OptimizerBenchConfig
from extmem.bench.pkm import PkmBenchConfig
from extmem.data.config import DataConfig
from extmem.experiments.downstream import DownstreamConfig
from extmem.experiments.sweep import SweepConfig, VariantConfig
from extmem.finetune.config import FinetuneConfig
from extmem.memory.config import (
    EngramConfig,
    ExpertsConfig,
    MemoryConfig,
    ProductKeyConfig,
    RouterLookupConfig,
)
from extmem.model.config import ModelConfig
from extmem.run.config import ParamGroupConfig, TrainConfig

# config class -> (the prefix its own error messages use, the fields a valid instance needs)
CONFIG_SETUP: dict[type, tuple[str, dict[str, Any]]] = {
    ProductKeyConfig: ("product_keys", {}),
    ExpertsConfig: ("experts", {}),
    RouterLookupConfig: ("router", {}),
    EngramConfig: ("engram", {}),
    MemoryConfig: ("memory", {}),
    AltUpConfig: ("model.altup", {}),
    ModelConfig: ("model", {}),
    DataConfig: ("data", {}),
    ParamGroupConfig: ("train.param_groups[g]", {"name": "g", "patterns": ["*"]}),
    TrainConfig: ("train", {}),
    FinetuneConfig: ("finetune", {}),
    DownstreamConfig: ("finetune", {"tasks": ["facts-attribute"]}),
    SweepConfig: ("sweep", {"name": "s", "base": "base.toml",
                            "variants": [VariantConfig("v")]}),
    VariantConfig: ("variants", {"name": "v"}),
    PkmBenchConfig: ("bench.pkm", {}),
    CapacityBenchConfig: ("bench.capacity", {}),
    ModelBenchConfig: ("bench.model", {}),
    OptimizerBenchConfig: ("bench.optimizer", {}),
    KernelsBenchConfig: ("bench.kernels", {}),
    EngramPrefetchBenchConfig: ("bench.engram-prefetch", {}),
}

# modules that `discover` does not import
EXCLUDED_MODULES = {"extmem.__main__"}  # runs the CLI when imported


def declares(cls: type, fields_of: Callable[[type], Mapping[str, Any]],
             unresolved: Callable[[dataclasses.Field], bool]) -> bool:
    """Whether fields that extmem declares (not, e.g., those of Hugging Face's dataclass
    PretrainedConfig, which HF validates) include one of `fields_of(cls)`. Where `fields_of`
    raises NameError (hints that name TYPE_CHECKING-only imports: runtime state, not configs),
    whether `unresolved` holds for one of those fields."""
    ours = {name for base in cls.__mro__ if base.__module__.startswith("extmem.")
            for name in vars(base).get("__annotations__", {})}
    try:
        return bool(set(fields_of(cls)) & ours)
    except NameError:
        return any(unresolved(f) for f in dataclasses.fields(cls) if f.name in ours)


@functools.cache
def _package_dataclasses() -> tuple[type, ...]:
    """Every dataclass defined in an extmem module (each module walked and imported once)."""
    found = []
    for info in pkgutil.walk_packages(extmem.__path__, "extmem."):
        if info.name in EXCLUDED_MODULES:
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (isinstance(obj, type) and dataclasses.is_dataclass(obj)
                    and obj.__module__ == info.name and obj not in found):
                found.append(obj)
    return tuple(found)


def discover(predicate: Callable[[type], bool]) -> set[type]:
    """Every dataclass defined in an extmem module for which `predicate` holds."""
    return {cls for cls in _package_dataclasses() if predicate(cls)}


def setups(classes: set[type]) -> dict[type, tuple[str, dict[str, Any]]]:
    """The CONFIG_SETUP entries of `classes` (in CONFIG_SETUP's order; those without one are
    left out, for a completeness test to report)."""
    return {cls: setup for cls, setup in CONFIG_SETUP.items() if cls in classes}


def missing_setup(classes: set[type]) -> list[str]:
    """The names of those of `classes` that have no CONFIG_SETUP entry."""
    return sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in classes
                  if cls not in CONFIG_SETUP)
