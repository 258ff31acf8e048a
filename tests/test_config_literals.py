"""Every `Literal`-annotated config field rejects a misspelt value with one error that names
the field, the value and the allowed values: from Python (`__post_init__`), from a run config
TOML, a `--set` override and a sweep file (as `extmem train` / `compare` read them), from an
`extmem augment --memory` file, and from the `--set` options of `extmem finetune` / `bench`.
The configs are every dataclass found in the package with such a field
(tests/config_classes.py), checked against the list of names below."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Literal

import pytest

from extmem.altup.config import AltUpConfig
from extmem.bench.capacity import CapacityBenchConfig
from extmem.bench.kernels import KernelsBenchConfig
from extmem.bench.model import ModelBenchConfig
from extmem.bench.pkm import PkmBenchConfig
from extmem.config import (
    LiteralField,
    from_dict,
    literal_fields,
    require_valid_fields,
    write_toml,
)
from extmem.data.config import DataConfig
from extmem.errors import ConfigError
from extmem.finetune.config import FinetuneConfig
from extmem.memory.config import EngramConfig, ExpertsConfig, MemoryConfig, ProductKeyConfig
from extmem.model.config import ModelConfig
from extmem.run.config import ParamGroupConfig, RunConfig, TrainConfig
from extmem.train.augment_run import build_memories
from tests.cli_helpers import error_line
from tests.config_classes import declares, discover, missing_setup, setups

EXPECTED = {"ProductKeyConfig", "ExpertsConfig", "EngramConfig", "MemoryConfig", "AltUpConfig", "ModelConfig",
            "DataConfig", "ParamGroupConfig", "TrainConfig", "FinetuneConfig", "PkmBenchConfig",
            "CapacityBenchConfig", "ModelBenchConfig", "KernelsBenchConfig", "OptimizerBenchConfig"}


def has_literal_fields(cls: type) -> bool:
    """Whether fields that extmem declares include a Literal-annotated one."""
    return declares(cls, literal_fields, lambda f: "Literal" in str(f.type))


DISCOVERED = discover(has_literal_fields)
# config class -> (the prefix its own error messages use, the fields a valid instance needs)
CONFIGS = setups(DISCOVERED)
# where each section of a run config sits in its TOML (keys, list indices)
RUN_SECTIONS: dict[type, list[str | int]] = {
    ModelConfig: ["model"],
    AltUpConfig: ["model", "altup"],
    MemoryConfig: ["model", "memories", 0],
    ProductKeyConfig: ["model", "memories", 0, "product_keys"],
    ExpertsConfig: ["model", "memories", 0, "experts"],
    EngramConfig: ["model", "memories", 0, "engram"],
    DataConfig: ["data"],
    TrainConfig: ["train"],
    ParamGroupConfig: ["train", "param_groups", 0],
}
BENCHES = {PkmBenchConfig: "pkm", CapacityBenchConfig: "capacity", ModelBenchConfig: "model",
           KernelsBenchConfig: "kernels"}

FIELDS = [(cls, name) for cls in CONFIGS for name in literal_fields(cls)]
IDS = [f"{cls.__name__}.{name}" for cls, name in FIELDS]


def typo_of(spec: LiteralField) -> str:
    """A misspelling of the first allowed value (its last letter dropped)."""
    typo = spec.allowed[0][:-1]
    assert typo not in spec.allowed
    return typo


def bad_value(cls: type, name: str) -> tuple[Any, str, str]:
    """(value to set, index suffix of the field path, expected message after the path)."""
    spec = literal_fields(cls)[name]
    typo = typo_of(spec)
    message = (f": {typo!r} is not allowed; choose one of "
               f"{', '.join(repr(a) for a in spec.allowed)}")
    return ([typo], "[0]", message) if spec.many else (typo, "", message)


def dotted(keys: list[str | int]) -> str:
    """['model', 'memories', 0, 'lookup'] -> 'model.memories[0].lookup' (as errors write it)."""
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).lstrip(".")


def minimal_run() -> dict[str, Any]:
    """A valid run config with every section present that RUN_SECTIONS points into (a file
    names all of [model], [data] and [train])."""
    return {"model": {"memories": [{"layers": [0]}]}, "data": {},
            "train": {"param_groups": [{"name": "g", "patterns": ["*"]}]}}


def put(data: dict[str, Any], keys: list[str | int], value: Any) -> dict[str, Any]:
    node: Any = data
    for key in keys[:-1]:
        node = node[key] if isinstance(key, int) else node.setdefault(key, {})
    node[keys[-1]] = value
    return data


def test_every_config_with_literal_fields_is_listed():
    missing = missing_setup(DISCOVERED)
    assert not missing, f"add {missing} to CONFIG_SETUP in tests/config_classes.py"
    assert {cls.__name__ for cls in DISCOVERED} == EXPECTED


def test_the_minimal_surroundings_are_valid():
    from_dict(RunConfig, minimal_run())
    for cls, (_prefix, required) in CONFIGS.items():
        cls(**required)


@pytest.mark.parametrize("cls, name", FIELDS, ids=IDS)
def test_python_rejects_a_typo(cls, name):
    prefix, required = CONFIGS[cls]
    value, index, message = bad_value(cls, name)
    with pytest.raises(ConfigError) as info:
        cls(**{**required, name: value})
    assert str(info.value) == f"{prefix}.{name}{index}{message}"


RUN_FIELDS = [(cls, name) for cls, name in FIELDS if cls in RUN_SECTIONS]


@pytest.mark.parametrize("cls, name", RUN_FIELDS,
                         ids=[f"{cls.__name__}.{name}" for cls, name in RUN_FIELDS])
def test_run_config_toml_set_and_sweep_reject_a_typo(cls, name, tmp_path, capsys):
    value, index, message = bad_value(cls, name)
    keys = [*RUN_SECTIONS[cls], name]
    expected = f"{dotted(keys)}{index}{message}"
    out = tmp_path / "run"
    # the typo in the TOML file
    bad = tmp_path / "bad.toml"
    write_toml(bad, put(minimal_run(), keys, value))
    assert error_line(capsys, "train", str(bad), "--out", str(out)) == f"error: {expected}"
    # the typo in a --set override of a valid file
    good = tmp_path / "good.toml"
    write_toml(good, minimal_run())
    override = f"{'.'.join(str(k) for k in keys)}={json.dumps(value)}"
    assert error_line(capsys, "train", str(good), "--out", str(out),
                      "--set", override) == f"error: {expected}"
    assert not out.exists()
    # the typo in a sweep variant's overrides
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(f'name = "s"\nbase = "good.toml"\n\n[[variants]]\nname = "v"\n'
                     f"set = [{json.dumps(override)}]\n")
    assert error_line(capsys, "compare", str(sweep), "--out", str(tmp_path / "sw")) == \
        f"error: sweep variant 'v': {expected}"


MEMORY_FIELDS = [(cls, name) for cls, name in RUN_FIELDS
                 if RUN_SECTIONS[cls][:3] == ["model", "memories", 0]]


@pytest.mark.parametrize("cls, name", MEMORY_FIELDS,
                         ids=[f"{cls.__name__}.{name}" for cls, name in MEMORY_FIELDS])
def test_augment_memory_file_rejects_a_typo(cls, name, tmp_path):
    value, index, message = bad_value(cls, name)
    keys = [*RUN_SECTIONS[cls][3:], name]
    path = tmp_path / "memory.toml"
    write_toml(path, put({"layers": [0]}, keys, value))
    with pytest.raises(ConfigError) as info:
        build_memories(ModelConfig(), Path(path), None, None)
    assert str(info.value) == f"{dotted(['memory', *keys])}{index}{message}"


@pytest.mark.parametrize("name", list(literal_fields(FinetuneConfig)))
def test_finetune_set_rejects_a_typo(name, tmp_path, capsys):
    value, index, message = bad_value(FinetuneConfig, name)
    for key in (name, f"finetune.{name}"):
        line = error_line(capsys, "finetune", str(tmp_path), "--task", "facts-attribute",
                          "--set", f"{key}={json.dumps(value)}")
        assert line == f"error: finetune.{name}{index}{message}"


BENCH_FIELDS = [(cls, name) for cls, name in FIELDS if cls in BENCHES]


@pytest.mark.parametrize("cls, name", BENCH_FIELDS,
                         ids=[f"{cls.__name__}.{name}" for cls, name in BENCH_FIELDS])
def test_bench_set_rejects_a_typo(cls, name, tmp_path, capsys):
    value, index, message = bad_value(cls, name)
    line = error_line(capsys, "bench", BENCHES[cls], "--set", f"{name}={json.dumps(value)}")
    assert line == f"error: bench.{BENCHES[cls]}.{name}{index}{message}"


@dataclasses.dataclass
class OptionalChoice:
    mode: Literal["a", "b"] | None = None

    def __post_init__(self) -> None:
        require_valid_fields(self, "example")


def test_a_literal_or_none_field_accepts_none_and_checks_the_rest():
    assert literal_fields(OptionalChoice) == {
        "mode": LiteralField(("a", "b"), optional=True, many=False)}
    assert OptionalChoice().mode is None and OptionalChoice("b").mode == "b"
    with pytest.raises(ConfigError, match=re.escape("example.mode: 'c' is not allowed; "
                                                    "choose one of 'a', 'b'")):
        OptionalChoice("c")
