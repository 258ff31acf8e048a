"""Plots of a sweep: validation curves (mean and +-std band over seeds) and quality vs
parameters / FLOPs. PNG via matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_curves(results: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in results["variants"]:
        curve = row["curve"]
        if not curve["steps"]:
            continue
        mean, std = curve["mean"], curve["std"]
        line, = ax.plot(curve["steps"], mean, label=row["variant"], linewidth=1.8)
        ax.fill_between(curve["steps"], [m - s for m, s in zip(mean, std, strict=True)],
                        [m + s for m, s in zip(mean, std, strict=True)],
                        color=line.get_color(), alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"{results['sweep']}: validation loss, mean +- std over "
                 f"{len(results['seeds'])} seed(s)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_quality(results: dict, path: Path) -> None:
    """Final validation loss against total parameters and against FLOPs per token."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for row in results["variants"]:
        loss = row["val_loss"]
        for ax, x in zip(axes, (row["params"]["total"], row["flops_per_token"]["total"]),
                         strict=True):
            ax.errorbar([x], [loss["mean"]], yerr=[loss["std"]], fmt="o", capsize=4,
                        label=row["variant"])
            ax.annotate(row["variant"], (x, loss["mean"]), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
    axes[0].set_xlabel("parameters (total)")
    axes[1].set_xlabel("forward FLOPs per token (total, incl. lookups)")
    for ax in axes:
        ax.set_ylabel("final validation loss")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{results['sweep']}: quality vs size and compute")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
