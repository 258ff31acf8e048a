"""Δ vs the baseline along the mean validation curves: the ladder of steps and the crossings."""

import pytest

from extmem.experiments.curve_deltas import curve_delta_table, curve_deltas


def _row(name: str, steps: list[int], mean: list[float]) -> dict:
    return {"variant": name, "curve": {"steps": steps, "mean": mean, "std": [0.0] * len(mean)}}


def test_deltas_at_the_ladder_and_the_last_step_and_the_crossings():
    steps = [150, 300, 450, 600, 750, 900, 1050, 1200]
    base = _row("dense", steps, [5.0, 4.0, 3.6, 3.4, 3.3, 3.2, 3.1, 3.0])
    # starts ahead, falls behind at 600, ahead again from 1,050
    memory = _row("pkm", steps, [4.5, 3.9, 3.7, 3.5, 3.35, 3.25, 3.05, 2.9])
    along = curve_deltas(memory, base)
    # 100 -> the nearest step 150, 300, 1,000 -> 1,050, and the last step 1,200
    assert along["steps"] == [150, 300, 1050, 1200]
    assert along["delta"] == pytest.approx([-0.5, -0.1, -0.05, -0.1])
    assert along["crossings"] == [450, 1050]


def test_only_the_steps_both_curves_have_count():
    base = _row("dense", [100, 200, 300], [3.0, 2.0, 1.0])
    memory = _row("pkm", [100, 300], [2.5, 1.5])   # one seed missed step 200
    assert curve_deltas(memory, base) == {"steps": [100, 300], "delta": [-0.5, 0.5],
                                          "crossings": [300]}
    assert curve_deltas(_row("pkm", [50], [1.0]), base) is None


def test_the_table_lists_each_variant_with_its_steps():
    base = _row("dense", [100, 300], [3.0, 2.0])
    memory = _row("pkm", [100, 300], [3.1, 1.9])
    memory["curve_vs_baseline"] = curve_deltas(memory, base)
    lines = curve_delta_table({"baseline": "dense", "variants": [base, memory]})
    assert "| pkm | 100: +0.100, 300: -0.100 | 300 |" in lines
    assert curve_delta_table({"baseline": "dense", "variants": [base]}) == []
