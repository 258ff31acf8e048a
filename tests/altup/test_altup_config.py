from pathlib import Path

import pytest

from extmem.altup import AltUpConfig
from extmem.config import from_dict, read_toml
from extmem.errors import ConfigError
from extmem.model import ModelConfig
from extmem.run.config import RunConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "altup"


@pytest.mark.parametrize(("fields", "message"), [
    ({"k": 1}, "model.altup.k: 1 must be an integer >= 2"),
    ({"k": 0}, "model.altup.k: 0"),
    ({"mode": "width"}, "model.altup.mode: 'width' is not allowed; choose one of 'blocks', "
                        "'sequence'"),
    ({"active": "random"}, "model.altup.active: 'random' is not allowed"),
    ({"embedding": "wide"}, "'standard', 'recycled', 'learned'"),
    ({"coefficients": "mlp"}, "model.altup.coefficients: 'mlp'"),
    ({"init": "zeros"}, "model.altup.init: 'zeros'"),
    ({"coef_clip": -1.0}, "model.altup.coef_clip: -1.0 must be >= 0"),
    ({"extra_blocks": -1}, "model.altup.extra_blocks: -1"),
    ({"mode": "sequence", "coefficients": "router"}, "model.altup.coefficients: 'router' needs "
                                                     "mode = 'blocks'"),
    ({"mode": "sequence", "embedding": "learned"}, "model.altup.embedding: 'learned' needs"),
    ({"mode": "sequence", "extra_blocks": 1}, "model.altup.extra_blocks: 1 needs"),
])
def test_bad_values_name_the_field(fields, message):
    with pytest.raises(ConfigError) as err:
        AltUpConfig(**fields)
    assert message in str(err.value)


def test_toml_table_and_errors_carry_the_dotted_path():
    model = from_dict(ModelConfig, {"altup": {"k": 4, "active": "same"}}, "model")
    assert model.altup == AltUpConfig(k=4, active="same")
    with pytest.raises(ConfigError, match=r"^model\.altup\.k: 1 must be"):
        from_dict(ModelConfig, {"altup": {"k": 1}}, "model")
    with pytest.raises(ConfigError, match=r"model\.altup: unknown key 'blocks'"):
        from_dict(ModelConfig, {"altup": {"blocks": 2}}, "model")
    with pytest.raises(ConfigError, match=r"model\.altup\.embedding: 'wide' is not allowed"):
        from_dict(ModelConfig, {"altup": {"embedding": "wide"}}, "model")


def test_defaults_and_widths():
    cfg = AltUpConfig()
    assert (cfg.mode, cfg.k, cfg.active, cfg.embedding, cfg.init) == (
        "blocks", 2, "alternating", "standard", "identity")
    assert ModelConfig().altup is None
    assert cfg.token_width(16) == 32
    assert AltUpConfig(k=4, embedding="recycled").token_width(16) == 16
    assert AltUpConfig(mode="sequence", k=4).token_width(16) == 16
    assert AltUpConfig(k=4, extra_blocks=2).total_blocks == 6


@pytest.mark.parametrize("name", ["altup", "recycled", "sequence", "gemma", "memory-concat"])
def test_shipped_configs_parse(name):
    cfg = from_dict(RunConfig, read_toml(CONFIGS / f"{name}.toml"))
    assert cfg.model.altup is not None and cfg.data.corpus == "facts"
