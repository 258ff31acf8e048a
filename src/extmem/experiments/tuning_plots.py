"""tuning.png of a tuning grid (experiments/tuning.py; docs/results.md, "Recipe grid"): one
panel per group (model family), a horizontal bar per finished cell, best on top, with the
mean of the grid's metric and its std over seeds as an error bar. The winner is drawn in
colour, the group's default cell hatched, the rest grey; a dashed line in every panel marks
the baseline group's winner, so each family reads against the tuned baseline at a glance
(each panel keeps its own scale: the families can differ by orders of magnitude).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

WINNER_COLOR = "tab:blue"
CELL_COLOR = "0.7"
BASELINE_COLOR = "black"


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"


def has_tuning_chart(results: dict) -> bool:
    return bool(results.get("tuning"))


def _baseline_winner(results: dict) -> tuple[str, float] | None:
    """(name, mean metric) of the winner of the baseline variant's group, if it has one."""
    by_name = {row["variant"]: row for row in results["variants"]}
    for entry in results["tuning"].values():
        if results["baseline"] in entry["cells"] or entry["default"] == results["baseline"]:
            winner = by_name[entry["winner"]]
            return entry["winner"], winner[entry["metric"]]["mean"]
    return None


def plot_tuning(results: dict, path: Path) -> None:
    tuning_figure(results).savefig(path, dpi=110)


def tuning_figure(results: dict) -> Figure:
    tuning = results["tuning"]
    by_name = {row["variant"]: row for row in results["variants"]}
    reference = _baseline_winner(results)
    heights = [max(len(entry["cells"]), 1) for entry in tuning.values()]
    fig = Figure(figsize=(8.5, 1.2 + 0.28 * sum(heights) + 0.6 * len(heights)),
                 layout="constrained")
    axes = fig.subplots(len(tuning), 1, squeeze=False,
                        gridspec_kw={"height_ratios": heights})[:, 0]
    metric = next(iter(tuning.values()))["metric"]
    for ax, (group, entry) in zip(axes, tuning.items(), strict=True):
        cells = entry["cells"][::-1]  # barh draws bottom-up: best on top
        means = [by_name[c][metric]["mean"] for c in cells]
        stds = [by_name[c][metric]["std"] for c in cells]
        colors = [WINNER_COLOR if c == entry["winner"] else CELL_COLOR for c in cells]
        bars = ax.barh(cells, means, xerr=stds, color=colors, edgecolor="0.3", linewidth=0.5)
        for bar, cell in zip(bars, cells, strict=True):
            if cell == entry["default"]:
                bar.set_hatch("//")
        ax.bar_label(bars, labels=[_number(m) for m in means], padding=3, fontsize=7)
        if reference is not None:
            name, value = reference
            ax.axvline(value, color=BASELINE_COLOR, linestyle="--", linewidth=1,
                       label=f"{name} (tuned baseline): {_number(value)}")
            ax.legend(loc="lower right", fontsize=7)
        ax.set_title(f"{group}: winner {entry['winner']} (hatched: the default cell)",
                     fontsize=9, loc="left")
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(x=0.15)
    axes[-1].set_xlabel(f"{metric} (mean ± std over seeds)")
    fig.suptitle(f"{results['sweep']}: tuning grid by {metric}", fontsize=10)
    return fig
