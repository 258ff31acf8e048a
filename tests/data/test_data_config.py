"""DataConfig / FactsConfig validation: every bad value names its field and what is allowed."""

from __future__ import annotations

import pytest

from extmem.config import from_dict
from extmem.data import DataConfig, FactsConfig
from extmem.data.facts_vocab import ATTRIBUTE_NAMES
from extmem.errors import ConfigError


def test_defaults_are_valid() -> None:
    cfg = DataConfig()
    assert cfg.corpus == "facts" and cfg.facts.n_entities == 300
    assert len(cfg.facts.attributes) >= 6
    assert cfg.facts.attributes == list(ATTRIBUTE_NAMES)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"corpus": "wiki"}, "data.corpus"),
    ({"corpus": "files"}, "data.path"),
    ({"corpus": "files", "path": "   "}, "data.path"),
    ({"corpus": "hf"}, "data.hf_name"),
    ({"corpus": "hf", "hf_name": "x", "hf_split": ""}, "data.hf_split"),
    ({"text_field": ""}, "data.text_field"),
    ({"path": 3}, "data.path"),
    ({"hf_config": None}, "data.hf_config"),
    ({"val_fraction": 1.5}, "data.val_fraction"),
    ({"val_fraction": 0.0}, "data.val_fraction"),
    ({"val_fraction": True}, "data.val_fraction"),
    ({"max_chars": -1}, "data.max_chars"),
    ({"max_chars": 1.5}, "data.max_chars"),
    ({"vocab_size": 259}, "data.vocab_size"),
    ({"vocab_size": 10**9}, "data.vocab_size"),
    ({"seq_len": 1}, "data.seq_len"),
    ({"facts": {"n_entities": 3}}, "data.facts"),
])
def test_data_config_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}"):
        DataConfig(**kwargs)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"n_entities": 0}, "n_entities"),
    ({"n_entities": 10**7}, "n_entities"),
    ({"attributes": []}, "attributes"),
    ({"attributes": ["city", "shoe_size"]}, "attributes"),
    ({"attributes": ["city", "city"]}, "attributes"),
    ({"templates_per_attribute": 2, "heldout_templates": 2}, "heldout_templates"),
    ({"templates_per_attribute": 1}, "templates_per_attribute"),
    ({"templates_per_attribute": 99}, "templates_per_attribute"),
    ({"heldout_templates": 0}, "heldout_templates"),
    ({"heldout_templates": 4}, "heldout_templates"),
    ({"seed": -1}, "seed"),
])
def test_facts_config_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^data.facts.{field}"):
        FactsConfig(**kwargs)


def test_messages_say_what_is_allowed() -> None:
    with pytest.raises(ConfigError) as info:
        DataConfig(val_fraction=1.5)
    assert str(info.value) == ("data.val_fraction: 1.5 is out of range; "
                               "allowed 0 < val_fraction < 1")
    with pytest.raises(ConfigError, match="allowed names: birth_year"):
        FactsConfig(attributes=["shoe_size"])


def test_from_dict_builds_nested_config_and_reports_paths() -> None:
    cfg = from_dict(DataConfig, {"corpus": "facts", "vocab_size": 300,
                                 "facts": {"n_entities": 5, "attributes": ["city", "pet"]}},
                    "data")
    assert cfg.facts.n_entities == 5 and cfg.facts.attributes == ["city", "pet"]
    with pytest.raises(ConfigError, match=r"^data\.facts\.n_entities: 0 is out of range"):
        from_dict(DataConfig, {"facts": {"n_entities": 0}}, "data")
    with pytest.raises(ConfigError, match=r"^data\.seq_len"):
        from_dict(DataConfig, {"seq_len": 0}, "data")
