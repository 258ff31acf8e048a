"""configs/pkm: Kim & Jung 2020's 2x2 (dense init vs scratch) x (parallel_ffn vs replace_ffn)."""

import dataclasses
from pathlib import Path

import pytest

from extmem.config import from_dict, read_toml
from extmem.memory.config import MemoryConfig
from extmem.run.config import RunConfig
from extmem.train.augment_run import build_memories

PKM = Path(__file__).resolve().parents[2] / "configs" / "pkm"


def load(name: str) -> RunConfig:
    return from_dict(RunConfig, read_toml(PKM / name))


@pytest.mark.parametrize("name", sorted(p.name for p in PKM.glob("*.toml")))
def test_every_config_parses(name):
    load(name)


def test_the_two_by_two_matches_at_equal_total_steps():
    dense = load("dense.toml")
    assert dense.model.memories == []
    for placement in ("parallel", "replace"):
        scratch = load(f"scratch-{placement}.toml")
        (memory,) = scratch.model.memories
        assert memory.placement == f"{placement}_ffn" and memory.zero_init_output
        # same core, data and training settings; scratch trains S1 + S2 = 2 x S1 steps
        assert dataclasses.replace(scratch.model, memories=[]) == dense.model
        assert scratch.data == dense.data
        assert dataclasses.replace(scratch.train, steps=dense.train.steps) == dense.train
        assert scratch.train.steps == 2 * dense.train.steps
        # the dense-init run (augment --memory scratch-*.toml) adds exactly this memory
        (added,) = build_memories(dense.model, PKM / f"scratch-{placement}.toml", None, None)
        assert added == memory


def test_masked_lm_configs():
    dense, memory = load("mlm-dense.toml"), load("mlm-parallel.toml")
    assert not dense.model.causal and not memory.model.causal
    assert dense.train.mask_prob == memory.train.mask_prob == 0.15
    assert isinstance(memory.model.memories[0], MemoryConfig)
    assert dataclasses.replace(memory.model, memories=[]) == dense.model
