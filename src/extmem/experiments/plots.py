"""Plots of a sweep: validation curves (mean and +-std band over seeds) and quality vs
parameters / FLOPs. PNG via matplotlib `Figure` objects rendered by Agg (no display and no
pyplot state, so importing this module never changes the caller's backend).

curves.png: variants lie close together once trained, so the loss axis is logarithmic, the
baseline is drawn on top in black (thicker, labelled "baseline: NAME"), the legend sits
outside the axes, and a second panel zooms on the second half of training, where the
differences are.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

BASELINE_COLOR = "black"
BASELINE_WIDTH = 2.8
VARIANT_WIDTH = 1.6


def seeds_label(results: dict) -> str:
    """"3 seed(s)", or for a partial report how many of them have finished per variant."""
    total = len(results["seeds"])
    if not results.get("pending"):
        return f"{total} seed(s)"
    done = sorted({len(row["seeds"]) for row in results["variants"]})
    span = str(done[0]) if len(done) == 1 else f"{done[0]}-{done[-1]}"
    return f"{span} of {total} seed(s), partial"


def _band(row: dict) -> tuple[list[float], list[float]]:
    curve = row["curve"]
    return ([m - s for m, s in zip(curve["mean"], curve["std"], strict=True)],
            [m + s for m, s in zip(curve["mean"], curve["std"], strict=True)])


def _draw(ax: Axes, rows: list[dict], baseline: str, labels: bool) -> None:
    """Mean curve and +-std band of each variant; the baseline last (on top), in black."""
    variants = [r for r in rows if r["variant"] != baseline]
    ordered = variants + [r for r in rows if r["variant"] == baseline]
    # tab10 repeats after 10 lines: past that, colours from tab20 (distinct up to 20 variants)
    palette = colormaps["tab10" if len(variants) <= 10 else "tab20"].colors
    for i, row in enumerate(ordered):
        curve = row["curve"]
        is_base = row["variant"] == baseline
        label = (f"baseline: {row['variant']}" if is_base else row["variant"]) if labels else None
        style = ({"color": BASELINE_COLOR, "linewidth": BASELINE_WIDTH, "zorder": 5}
                 if is_base else {"color": palette[i % len(palette)], "linewidth": VARIANT_WIDTH,
                                  "zorder": 3})
        line, = ax.plot(curve["steps"], curve["mean"], label=label, **style)
        low, high = _band(row)
        ax.fill_between(curve["steps"], low, high, color=line.get_color(),
                        alpha=0.12 if is_base else 0.2, linewidth=0, zorder=line.get_zorder() - 1)


def _log_axis(ax: Axes) -> None:
    """Log scale with plain-number labels (losses span well under a decade)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _late(rows: list[dict]) -> tuple[float, list[float]] | None:
    """The second half of training: its first step and the band values in it (None: fewer
    than two evaluations there to draw)."""
    last = max(max(r["curve"]["steps"]) for r in rows)
    late = [(r, [i for i, s in enumerate(r["curve"]["steps"]) if s >= last / 2]) for r in rows]
    if max(len(idx) for _, idx in late) < 2:
        return None
    values = [v for r, idx in late for i in idx for v in (_band(r)[0][i], _band(r)[1][i])]
    return last / 2, values


def _zoom(ax: Axes, rows: list[dict], baseline: str, late: tuple[float, list[float]]) -> None:
    """The second half of training on a linear axis fitted to the bands there."""
    start, values = late
    low, high = min(values), max(values)
    pad = (high - low) * 0.08 or abs(high) * 0.01 or 0.01
    _draw(ax, rows, baseline, labels=False)
    ax.set_xlim(start, max(max(r["curve"]["steps"]) for r in rows))
    ax.set_ylim(low - pad, high + pad)
    ax.set_title("second half of training (zoomed, linear)", fontsize=10)
    ax.set_xlabel("training step")
    ax.grid(alpha=0.3)


def curves_figure(results: dict) -> Figure:
    """Left: the whole of training (log loss axis); right, when there are enough evaluations:
    the second half zoomed. Legend outside, right of the panels."""
    rows = [r for r in results["variants"] if r["curve"]["steps"]]
    baseline = results["baseline"]
    late = _late(rows) if rows else None
    fig = Figure(figsize=(13, 4.8) if late else (8, 4.8))
    axes = fig.subplots(1, 2 if late else 1, squeeze=False)[0]
    ax = axes[0]
    _draw(ax, rows, baseline, labels=True)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("whole run (log scale)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if rows:
        _log_axis(ax)
    if late:
        _zoom(axes[1], rows, baseline, late)
    fig.suptitle(f"{results['sweep']}: validation loss by step, mean ± std over "
                 f"{seeds_label(results)}")
    if rows:
        handles, labels = ax.get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda i: not labels[i].startswith("baseline: "))
        axes[-1].legend([handles[i] for i in order], [labels[i] for i in order],
                        loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def plot_curves(results: dict, path: Path) -> None:
    curves_figure(results).savefig(path, dpi=120, bbox_inches="tight")


def plot_quality(results: dict, path: Path) -> None:
    """Final validation loss against total parameters and against FLOPs per token; one
    colour per variant in both panels (legend outside, right), the baseline in black."""
    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2)
    for row in results["variants"]:
        loss = row["val_loss"]
        is_base = row["variant"] == results["baseline"]
        style = {"color": BASELINE_COLOR, "markersize": 8, "zorder": 5} if is_base else {}
        for ax, x in zip(axes, (row["params"]["total"], row["flops_per_token"]["total"]),
                         strict=True):
            ax.errorbar([x], [loss["mean"]], yerr=[loss["std"]], fmt="o", capsize=4,
                        label=f"baseline: {row['variant']}" if is_base else row["variant"],
                        **style)
    axes[0].set_xlabel("parameters (total)")
    axes[1].set_xlabel("forward FLOPs per token (total, incl. lookups)")
    for ax in axes:
        ax.set_ylabel("final validation loss")
        ax.grid(alpha=0.3)
        ax.margins(x=0.1)
    axes[1].legend(*axes[0].get_legend_handles_labels(), loc="upper left",
                   bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.suptitle(f"{results['sweep']}: final validation loss (mean ± std over seeds) vs "
                 "parameters and FLOPs per token")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
