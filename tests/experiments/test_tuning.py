"""Tuning grids (`tune_by`): the best cell per group, by hand and through `extmem compare`."""

import pytest
from tests.cli_helpers import error_line, run_sweep

from extmem.cli import main
from extmem.experiments.tuning import tuning_summary
from extmem.experiments.tuning_plots import tuning_figure


def _row(name: str, **metrics: float) -> dict:
    return {"variant": name, "seeds": [0],
            **{k: {"mean": v, "std": 0.0, "values": [v]} for k, v in metrics.items()}}


def test_the_winner_is_the_best_mean_per_group_in_the_metrics_direction():
    rows = [_row("pkm", stored_bits=10.0, val_loss=2.0),
            _row("pkm-top32", stored_bits=30.0, val_loss=2.5),
            _row("pkm-lr", stored_bits=20.0, val_loss=1.5),
            _row("dense", stored_bits=5.0, val_loss=3.0)]
    groups = {"dense": "dense", "pkm": "pkm", "pkm-top32": "pkm", "pkm-lr": "pkm",
              "pkm-unfinished": "pkm"}
    by_bits = tuning_summary(rows, groups, "stored_bits")   # larger is better
    assert by_bits["pkm"] == {"metric": "stored_bits", "default": "pkm", "winner": "pkm-top32",
                              "cells": ["pkm-top32", "pkm-lr", "pkm"]}
    assert by_bits["dense"]["winner"] == "dense"
    by_loss = tuning_summary(rows, groups, "val_loss")       # smaller is better
    assert by_loss["pkm"]["cells"] == ["pkm-lr", "pkm", "pkm-top32"]
    # a group whose default has not finished still ranks what has; no cell: no entry
    unfinished = tuning_summary(rows[1:], groups, "stored_bits")
    assert unfinished["pkm"]["default"] == "pkm" and unfinished["pkm"]["winner"] == "pkm-top32"
    assert tuning_summary(rows[:1], {"pkm": "pkm", "dense": "dense"}, "stored_bits").keys() == {"pkm"}


SWEEP = """
name = "grid"
base = "tiny.toml"
seeds = [0]
steps = 2
tune_by = "stored_bits"
core_flops_tolerance = 10.0

[[variants]]
name = "dense"
group = "dense"
set = ["model.memories=[]"]

[[variants]]
name = "dense-lr1e-2"
group = "dense"
set = ["model.memories=[]", "train.lr=1e-2"]

[[variants]]
name = "pkm"
group = "pkm"
"""


def test_a_grid_sweep_reports_the_winner_per_group(tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    results = run_sweep(capsys, tiny_config.parent / "grid.toml", SWEEP, out,
                        "train.eval_every=0")
    # the terminal says each group's winner (a rerun trains nothing: every run has finished)
    assert main(["compare", str(tiny_config.parent / "grid.toml"), "--out", str(out),
                 "--quiet", "--set", "train.eval_every=0"]) == 0
    printed = capsys.readouterr().out
    assert "tuning pkm: best stored_bits pkm " in printed and "(the default)" in printed
    bits = {row["variant"]: row["stored_bits"]["mean"] for row in results["variants"]}
    dense = results["tuning"]["dense"]
    assert dense["default"] == "dense" and dense["metric"] == "stored_bits"
    assert dense["winner"] == max(("dense", "dense-lr1e-2"), key=lambda v: bits[v])
    assert results["tuning"]["pkm"]["cells"] == ["pkm"]
    report = (out / "results.md").read_text()
    assert "Tuning grid: per group, the cell with the largest mean `stored_bits` wins" in report
    assert f"**dense**: winner `{dense['winner']}` (default `dense`)" in report
    # the winner's own settings, to carry into the experiment
    expected = {"dense": ["model.memories=[]"],
                "dense-lr1e-2": ["model.memories=[]", "train.lr=1e-2"]}[dense["winner"]]
    assert dense["winner_set"] == expected and results["tuning"]["pkm"]["winner_set"] == []
    assert "; its own settings: none (the sweep's)" in report
    # one corpus, many settings: no capacity lines or bars for a grid's families
    assert not (out / "capacity.png").exists() and not (out / "capacity_bars.png").exists()
    # but a bar chart of the grid, one panel per group
    assert (out / "tuning.png").stat().st_size > 0 and "![tuning grid](tuning.png)" in report


def test_a_grid_needs_a_known_metric_and_a_group_for_every_variant(tiny_config, tmp_path,
                                                                  capsys):
    path = tiny_config.parent / "bad.toml"
    path.write_text(SWEEP.replace('tune_by = "stored_bits"', 'tune_by = "bits"'))
    assert error_line(capsys, "compare", str(path)) == (
        "error: sweep.tune_by: 'bits' is not allowed; allowed: val_loss, val_bpb, "
        "stored_bits, facts_recalled")
    path.write_text(SWEEP.replace('group = "pkm"\n', ""))
    assert error_line(capsys, "compare", str(path)) == (
        "error: sweep.tune_by: variants ['pkm'] have no group; a tuning grid picks the best "
        "cell per group, so give every variant one (group = \"...\")")


@pytest.mark.parametrize("metric", ["val_loss", "facts_recalled"])
def test_a_cell_without_the_metric_is_not_ranked(metric):
    rows = [_row("a", stored_bits=1.0), _row("b", **{metric: 0.5})]
    assert tuning_summary(rows, {"a": "g", "b": "g"}, metric)["g"]["cells"] == ["b"]


def test_the_tuning_chart_draws_each_group_best_on_top_against_the_tuned_baseline():
    rows = [_row("dense", stored_bits=5.0), _row("dense-lr", stored_bits=7.0),
            _row("pkm", stored_bits=10.0), _row("pkm-top32", stored_bits=30.0),
            _row("pkm-lr", stored_bits=20.0)]
    groups = {"dense": "dense", "dense-lr": "dense", "pkm": "pkm", "pkm-top32": "pkm",
              "pkm-lr": "pkm"}
    results = {"sweep": "grid", "baseline": "dense", "variants": rows,
               "tuning": tuning_summary(rows, groups, "stored_bits")}
    dense_ax, pkm_ax = tuning_figure(results).axes
    # barh draws bottom-up: the best cell is the last bar, on top
    assert [t.get_text() for t in pkm_ax.get_yticklabels()] == ["pkm", "pkm-lr", "pkm-top32"]
    assert [bar.get_width() for bar in pkm_ax.patches] == [10.0, 20.0, 30.0]
    hatched = [bar.get_hatch() for bar in pkm_ax.patches]
    assert hatched[0] == "//" and not any(hatched[1:])             # the default cell
    colors = [bar.get_facecolor() for bar in pkm_ax.patches]
    assert colors[2] != colors[0] and colors[0] == colors[1]         # the winner stands out
    # the dashed reference in every panel: the baseline group's winner, dense-lr's 7.0
    for ax in (dense_ax, pkm_ax):
        assert [line.get_xdata()[0] for line in ax.get_lines()] == [7.0]
