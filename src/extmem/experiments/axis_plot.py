"""axis.png of a sweep whose variants lie on one axis (`x` per variant, the sweep's `x_label`
and `x_scale`): the final validation loss against x, mean and Welch's 95 % interval of the
mean over seeds, one line per `group` (or one line), the baseline's loss as a dashed line when
it has no x. An allocation sweep (Cheng et al. 2026, the U-shaped allocation law: loss against
the share of sparse parameters in the tables) or a learning-rate grid reads at a glance.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from extmem.experiments.stats import mean_interval

BASELINE_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1.2}


def has_axis_chart(results: dict) -> bool:
    return bool(results.get("x_label")) and any("x" in r for r in results["variants"])


def axis_lines(results: dict) -> dict[str, list[dict]]:
    """group (or "") -> its rows that have an x, by x."""
    lines: dict[str, list[dict]] = {}
    for row in results["variants"]:
        if "x" in row and "val_loss" in row:
            lines.setdefault(row.get("group", ""), []).append(row)
    return {g: sorted(rows, key=lambda r: r["x"]) for g, rows in lines.items()}


def axis_figure(results: dict) -> Figure:
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for group, rows in axis_lines(results).items():
        intervals = [mean_interval(r["val_loss"]["values"]) for r in rows]
        means = [r["val_loss"]["mean"] for r in rows]
        ax.errorbar([r["x"] for r in rows], means,
                    yerr=[[m - low for m, (low, _) in zip(means, intervals, strict=True)],
                          [high - m for m, (_, high) in zip(means, intervals, strict=True)]],
                    marker="o", capsize=4, label=group or None)
    base = next(r for r in results["variants"] if r["variant"] == results["baseline"])
    if "x" not in base and "val_loss" in base:
        ax.axhline(base["val_loss"]["mean"], label=f"baseline: {base['variant']}",
                   **BASELINE_STYLE)
    ax.set_xscale(results.get("x_scale", "linear"))
    ax.set_xlabel(results["x_label"])
    ax.set_ylabel("final validation loss (nats/token)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.suptitle(f"{results['sweep']}: final validation loss\nagainst {results['x_label']}\n"
                 "(mean and 95 % interval of the mean over seeds; one seed: no bar)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_axis(results: dict, path: Path) -> None:
    axis_figure(results).savefig(path, dpi=120)
