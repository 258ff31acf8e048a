"""Every `float`-annotated config field rejects inf and nan with one error naming the field and
the value (`extmem.config.require_valid_fields`, first in every config's `__post_init__`), from
Python and from a run config's `--set`; and the range checks a user expects (learning rates
> 0, betas in [0, 1), rope_base > 0, ...) hold from the command line. The configs are every
config dataclass with a float field found in the package (tests/config_classes.py), checked
against the list of names below."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest

from extmem.config import FloatField, float_fields, require_valid_fields
from extmem.errors import ConfigError
from tests.cli_helpers import error_line
from tests.config_classes import declares, discover, missing_setup, setups

EXPECTED = {"ProductKeyConfig", "RouterLookupConfig", "MemoryConfig", "AltUpConfig", "ModelConfig",
            "DataConfig", "ParamGroupConfig", "TrainConfig", "FinetuneConfig", "SweepConfig", "VariantConfig",
            "EngramPrefetchBenchConfig"}


def has_float_fields(cls: type) -> bool:
    """Whether a config dataclass (it validates itself in `__post_init__`) has a field that
    extmem declares (not one of, e.g., Hugging Face's PretrainedConfig) float-annotated."""
    return "__post_init__" in vars(cls) and declares(cls, float_fields, lambda f: False)


DISCOVERED = discover(has_float_fields)
# config class -> (the prefix its own error messages use, the fields a valid instance needs)
CONFIGS = setups(DISCOVERED)
FIELDS = [(cls, name) for cls in CONFIGS for name in float_fields(cls)]
BAD = [math.inf, -math.inf, math.nan]


def test_every_config_with_float_fields_is_listed():
    missing = missing_setup(DISCOVERED)
    assert not missing, f"add {missing} to CONFIG_SETUP in tests/config_classes.py"
    assert {cls.__name__ for cls in DISCOVERED} == EXPECTED


def test_the_listed_configs_are_valid_with_their_defaults():
    for cls, (_prefix, required) in CONFIGS.items():
        cls(**required)


@pytest.mark.parametrize("bad", BAD, ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("cls, name", FIELDS, ids=[f"{c.__name__}.{n}" for c, n in FIELDS])
def test_python_rejects_a_non_finite_float(cls, name, bad):
    prefix, required = CONFIGS[cls]
    spec = float_fields(cls)[name]
    value, index = ([bad], "[0]") if spec.many else (bad, "")
    with pytest.raises(ConfigError) as info:
        cls(**{**required, name: value})
    assert str(info.value) == f"{prefix}.{name}{index}: {bad!r} is not allowed; use a finite number"


@dataclasses.dataclass
class Floats:
    one: float = 1.0
    maybe: float | None = None
    many: list[float] = dataclasses.field(default_factory=lambda: [0.5])
    fixed: tuple[float, ...] = (1.0,)
    count: int = 3

    def __post_init__(self) -> None:
        require_valid_fields(self, "example")


def test_optional_and_list_floats_are_checked_item_by_item():
    assert float_fields(Floats) == {"one": FloatField(optional=False, many=False),
                                    "maybe": FloatField(optional=True, many=False),
                                    "many": FloatField(optional=False, many=True),
                                    "fixed": FloatField(optional=False, many=True)}
    assert Floats(maybe=2.0, many=[1.0, -3.0], count=10**400).maybe == 2.0
    for kwargs, message in [({"maybe": math.nan}, "example.maybe: nan"),
                            ({"many": [1.0, math.inf]}, "example.many[1]: inf"),
                            ({"fixed": (-math.inf,)}, "example.fixed[0]: -inf")]:
        with pytest.raises(ConfigError, match=re.escape(f"{message} is not allowed")):
            Floats(**kwargs)


# --set on a valid run config -> the one error line (after "error: ")
CLI_CASES = {
    "train.lr=inf": "train.lr: inf is not allowed; use a finite number",
    "train.lr=nan": "train.lr: nan is not allowed; use a finite number",
    "train.lr=0": "train.lr: 0.0 must be > 0",
    "train.lr=-1e-3": "train.lr: -0.001 must be > 0",
    "train.beta1=1": "train.beta1: 1.0 must be in [0, 1)",
    "train.beta2=-0.1": "train.beta2: -0.1 must be in [0, 1)",
    "train.grad_clip=inf": "train.grad_clip: inf is not allowed; use a finite number",
    'train.param_groups=[{name = "g", patterns = ["*"], lr = 0}]':
        "train.param_groups[g].lr: 0.0 must be > 0",
    'train.param_groups=[{name = "g", patterns = ["*"], lr = inf}]':
        "train.param_groups[g].lr: inf is not allowed; use a finite number",
    'train.param_groups=[{name = "g", patterns = ["*"], weight_decay = nan}]':
        "train.param_groups[g].weight_decay: nan is not allowed; use a finite number",
    "model.init_std=inf": "model.init_std: inf is not allowed; use a finite number",
    "model.init_std=0": "model.init_std: 0.0 must be > 0",
    "model.rope_base=0": "model.rope_base: 0.0 must be > 0 (rotary frequencies are "
                         "rope_base ** (-2i / head width))",
    "model.rope_base=-inf": "model.rope_base: -inf is not allowed; use a finite number",
    "model.norm_eps=0": "model.norm_eps: 0.0 must be > 0 (it keeps RMSNorm finite on an "
                        "all-zero vector)",
    "model.dropout=nan": "model.dropout: nan is not allowed; use a finite number",
    "model.memories.0.value_dropout=inf":
        "model.memories[0].value_dropout: inf is not allowed; use a finite number",
    "model.memories.0.product_keys.query_dropout=nan":
        "model.memories[0].product_keys.query_dropout: nan is not allowed; use a finite number",
    "model.memories.0.lsh.seed=-1": "model.memories[0].lsh.seed: -1 must be >= 0",
    "data.val_fraction=inf": "data.val_fraction: inf is not allowed; use a finite number",
}


@pytest.mark.parametrize("override, expected", list(CLI_CASES.items()), ids=list(CLI_CASES))
def test_train_set_rejects_a_bad_number(override, expected, tiny_config, tmp_path, capsys):
    out = tmp_path / "run"
    line = error_line(capsys, "train", str(tiny_config), "--out", str(out), "--set", override)
    assert line == f"error: {expected}"
    assert not out.exists()
