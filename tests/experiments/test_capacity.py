"""Capacity meter: knowledge bits by hand, and the capacity table + chart of a grouped sweep."""

import json
import math

import pytest
from tests.cli_helpers import run_sweep

from extmem.data.facts_vocab import VALUES
from extmem.experiments.capacity import STORAGE_COMPARED, knowledge_bits
from extmem.experiments.capacity_plots import BAR_METRICS, capacity_bars_figure, capacity_figure


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
    # the storage meter beside it (extmem.run.storage): one run's results, the summary, the table
    run = json.loads((out / "small-e12" / "seed-0" / "results.json").read_text())
    assert run["stored_facts"] == 36 and 0 <= run["stored_bits"] <= run["stored_bits_max"]
    assert run["recall_heldout_phrasing"] == run["facts_recalled"]
    assert run["training_flops"] == run["flops_per_token"]["total"] * run["tokens"]
    assert run["stored_bits_per_flop"] == pytest.approx(run["stored_bits"] / run["training_flops"])
    assert run["stored_bits_per_core_flop"] == pytest.approx(
        run["stored_bits"] / (run["flops_per_token"]["core"] * run["tokens"]))
    assert small12["stored_bits"]["mean"] == pytest.approx(run["stored_bits"])
    assert small12["stored_bits_floor"]["values"] == [run["stored_bits_floor"]]
    assert small12["stored_bits_by_attribute"] == pytest.approx(run["stored_bits_by_attribute"])
    assert sum(run["stored_bits_by_attribute"].values()) == pytest.approx(run["stored_bits"])
    assert small12["recall_train_phrasing"]["values"] == [run["recall_train_phrasing"]]
    assert small12["capacity"]["bits_offered"] == pytest.approx(run["stored_bits_max"])
    assert "bits_train_phrasing" in small12["capacity"]
    report = (out / "results.md").read_text()
    assert "storage meter" in report and "recall (training phrasing)" in report
    assert "floor (wrong values)" in report
    # the storage metrics beside the baseline (the first variant): differences of the means
    assert results["baseline"] == "small-e6"
    for metric in STORAGE_COMPARED:
        versus = small12["vs_baseline"][metric]
        assert versus["diff"] == pytest.approx(small12[metric]["mean"] - small6[metric]["mean"])
    assert "Stored bits vs `small-e6`" in report
    # where the bits are: per attribute, the bits stored and their share of those offered
    city = small12["stored_bits_by_attribute"]["city"]
    share = city / (12 * math.log2(len(VALUES["city"])))
    attribute_row = next(line for line in report.splitlines()
                         if line.startswith("| small-e12 | ") and "%)" in line)
    assert f"{city:,.0f} ({share:.0%})" in attribute_row
    stored_row = next(line for line in report.splitlines()
                      if line.startswith("| small-e12 | ") and line.count("|") == 6)
    diff = small12["vs_baseline"]["stored_bits"]["diff"]
    assert stored_row.split(" | ")[1].startswith(f"{diff:+.3g}")
    fig = capacity_figure(results)
    assert len(fig.axes) == 4 and "bits stored" in fig.axes[2].get_ylabel()
    assert "above the meter's floor" in fig.axes[3].get_ylabel()
    for ax in fig.axes[2:]:
        assert "bits offered (all stored)" in [line.get_label() for line in ax.get_lines()]
    # the bars: the group at its peak (the corpus where it stored more), one panel per figure
    assert (out / "capacity_bars.png").is_file() and "capacity_bars.png" in report
    # every run measured the floor: the peak is taken on the bits above it, and so are its
    # ratios (the run's above-floor bits over its parameters and its training FLOPs)
    above = "stored_bits_above_floor"
    assert small12[above + "_per_param"]["mean"] == pytest.approx(
        run[above] / run["params"]["total"])
    assert small12[above + "_per_core_flop"]["mean"] == pytest.approx(
        run[above] / (run["flops_per_token"]["core"] * run["tokens"]))
    peak = max((small6, small12), key=lambda r: (r[above]["mean"], -r["capacity"]["facts"]))
    bars = capacity_bars_figure(results)
    assert [ax.get_ylabel() for ax in bars.axes] == [label for _, label in BAR_METRICS]
    for ax, (suffix, _) in zip(bars.axes, BAR_METRICS, strict=True):
        (bar,) = ax.patches
        assert bar.get_height() == pytest.approx(peak[above + suffix]["mean"])
    facts = peak["capacity"]["facts"]
    assert (bars.axes[0].get_xticklabels()[0].get_text()
            == f"small\n({facts} facts, above the floor)")
    # the capacity table: the family's bits above the floor at both corpus sizes, its state
    family = next(line for line in report.splitlines() if line.startswith("| small | "))
    assert f"{small6[above]['mean']:,.0f} (" in family
    assert f"{small12[above]['mean']:,.0f} (" in family
    assert "| above the floor |" in family
