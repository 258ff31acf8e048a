"""Capacity meter: knowledge bits by hand, and the capacity table + chart of a grouped sweep."""

import math

import pytest
from tests.cli_helpers import run_sweep

from extmem.experiments.capacity import knowledge_bits


def test_knowledge_bits_by_hand():
    bits = (math.log2(100) + math.log2(30)) / 2   # birth_year: 100 values, city: 30
    chance = (1 / 100 + 1 / 30) / 2
    expected = 10 * (0.5 - chance) / (1 - chance) * bits
    assert knowledge_bits(0.5, 10, ["birth_year", "city"]) == pytest.approx(expected)
    assert knowledge_bits(1.0, 10, ["birth_year", "city"]) == pytest.approx(10 * bits)
    assert knowledge_bits(0.0, 10, ["birth_year", "city"]) == 0.0   # at or below chance: 0


SWEEP = """
name = "cap"
base = "tiny.toml"
seeds = [0]
steps = 2
core_flops_tolerance = 10.0

[[variants]]
name = "small-e6"
group = "small"
set = ["model.memories=[]", "data.facts.n_entities=6"]

[[variants]]
name = "small-e12"
group = "small"
set = ["model.memories=[]"]
"""


def test_grouped_sweep_reports_capacity(tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    results = run_sweep(capsys, tiny_config.parent / "cap.toml", SWEEP, out, "train.eval_every=0")
    small6, small12 = results["variants"]
    assert small6["group"] == small12["group"] == "small"
    assert small6["capacity"]["facts"] == 6 * 3 and small12["capacity"]["facts"] == 12 * 3
    recalled = small12["facts_recalled"]["mean"]
    bits = knowledge_bits(recalled, 36, ["birth_year", "city", "occupation"])
    assert small12["capacity"]["bits"]["mean"] == pytest.approx(bits)
    assert small12["capacity"]["bits_per_core_param"]["mean"] == pytest.approx(
        bits / small12["params"]["core"])
    assert (out / "capacity.png").is_file()
    assert "knowledge bits" in (out / "results.md").read_text()
