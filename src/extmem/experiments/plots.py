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


def has_capacity_chart(results: dict) -> bool:
    return any("group" in row and "capacity" in row for row in results["variants"])


def plot_capacity(results: dict, path: Path) -> None:
    """Per model family (`group`): facts recalled and knowledge bits against the facts offered."""
    groups: dict[str, list[dict]] = {}
    for row in results["variants"]:
        if "group" in row and "capacity" in row:
            groups.setdefault(row["group"], []).append(row)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for group, rows in groups.items():
        rows = sorted(rows, key=lambda r: r["capacity"]["facts"])
        facts = [r["capacity"]["facts"] for r in rows]
        for ax, values in ((axes[0], [r["facts_recalled"] for r in rows]),
                           (axes[1], [r["capacity"]["bits"] for r in rows])):
            ax.errorbar(facts, [v["mean"] for v in values], yerr=[v["std"] for v in values],
                        marker="o", capsize=3, label=group)
    axes[0].set_ylabel("facts recalled (fraction of held-out probes)")
    axes[1].set_ylabel("knowledge stored (chance-corrected bits)")
    for ax in axes:
        ax.set_xlabel("facts in the corpus")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{results['sweep']}: where each model stops recalling facts")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
