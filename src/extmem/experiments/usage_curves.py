"""Memory usage over training, per variant: the figures Kim & Jung 2020 ("Large Product Key
Memory for Pretrained Language Models", sec. 4) use to show stale slots, read from each run's
evaluations in metrics.jsonl and averaged over the run's memories and the variant's seeds.

- Lample usage: the fraction of slots read at least once on the evaluation set;
- windowed usage: the fraction read in the last `train.usage_window` training steps;
- never selected: the fraction never read in training so far;
- staleness: mean steps since a slot was last read (extmem.memory.stats).

usage.png: one panel per figure, one line per variant that has memory.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure

from extmem.run.run_dir import read_metrics

FIGURES = {"usage": "Lample usage (eval set)", "train_windowed_usage": "windowed usage (training)",
           "train_never_read": "never selected (training)",
           "train_staleness_mean": "staleness, mean steps since last read"}


def run_usage_curve(run_dir: Path, offset: int = 0) -> dict[int, dict[str, float]]:
    """step (+ offset) -> each figure averaged over the run's memories, at every evaluation."""
    curve = {}
    for record in read_metrics(run_dir):
        layers = list((record.get("memory_usage") or {}).values())
        if record.get("split") != "val" or not layers:
            continue
        curve[offset + record["step"]] = {
            key: sum(layer[key] for layer in layers) / len(layers)
            for key in FIGURES if all(key in layer for layer in layers)}
    return curve


def mean_at_shared_steps(curves: list[dict[int, dict[str, float]]],
                         keys: tuple[str, ...]) -> dict | None:
    """{"steps": the steps every curve has, key: the mean over curves at each} for each of
    `keys` that every curve has at every such step; None when a curve is empty (or none
    is given)."""
    if not curves or not all(curves):
        return None
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    out: dict = {"steps": steps}
    for key in keys:
        if all(key in c[s] for c in curves for s in steps):
            out[key] = [sum(c[s][key] for c in curves) / len(curves) for s in steps]
    return out


def usage_curve(runs: list[tuple[Path, int]]) -> dict | None:
    """Mean over runs (run_dir, step offset) at the steps all of them evaluated; None when the
    runs have no memory."""
    return mean_at_shared_steps([run_usage_curve(run_dir, offset) for run_dir, offset in runs],
                                tuple(FIGURES))


def has_usage_chart(results: dict) -> bool:
    return any(row.get("usage_curve") for row in results["variants"])


def plot_usage(results: dict, path: Path) -> None:
    rows = [row for row in results["variants"] if row.get("usage_curve")]
    fig = Figure(figsize=(13, 7.5))
    axes = fig.subplots(2, 2).flatten()
    palette = colormaps["tab10"].colors
    for ax, (key, title) in zip(axes, FIGURES.items(), strict=True):
        for i, row in enumerate(rows):
            curve = row["usage_curve"]
            if key in curve:
                ax.plot(curve["steps"], curve[key], label=row["variant"],
                        color=palette[i % len(palette)])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, frameon=False)
    fig.suptitle(f"{results['sweep']}: memory usage over training (mean over memories and seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
