"""Every shipped config parses, validates and builds its model (training is tested elsewhere)."""

from pathlib import Path

import pytest

from extmem import Transformer
from extmem.config import from_dict, read_toml
from extmem.model import flops_per_token, parameter_counts
from extmem.run.config import RunConfig

CONFIGS = sorted(p for p in (Path(__file__).parent.parent / "configs").rglob("*.toml")
                 if "sweeps" not in p.parts)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_builds(path):
    cfg = from_dict(RunConfig, read_toml(path))
    cfg.model.vocab_size = cfg.data.vocab_size
    model = Transformer(cfg.model)
    counts = parameter_counts(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert flops_per_token(model, cfg.data.seq_len)["total"] > 0
    assert (counts["memory_tables"] > 0) == bool(cfg.model.memories)


def test_the_design_space_is_complete():
    names = {p.stem for p in CONFIGS if p.parent.name == "design"}
    expected = {f"{lookup}-{readout}" for lookup in ("token", "lsh", "router", "product_keys")
                for readout in ("add", "concat", "experts")} | {"ngram-gated"}
    assert expected <= names
