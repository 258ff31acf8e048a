"""PNG plots of memory usage (matplotlib `Figure` objects rendered by Agg: no display and no
pyplot state, so importing this module never changes the caller's backend).

Figures after Kim & Jung 2020, "Large Product Key Memory for Pretrained Language Models"
(outdated slots during training), and Lample et al. 2019 (usage over an evaluation set):
- windowed_usage.png: windowed usage of the training reads and eval-set usage over training;
- staleness.png: per memory layer, slots by steps since last selected, plus never selected;
- heatmap.png: per memory layer, eval-set read weight and training read counts per slot,
  reshaped to the n_keys x n_keys product-key grid (row = first sub-key, column = second);
- usage_by_tokens.png (with `extmem usage --eval-tokens / --windows`): fraction of slots read
  against the tokens that read them, over evaluation sets of several sizes (Lample's usage)
  and over training windows of several lengths (windowed usage), so the two metrics are
  compared at equal reads.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure

STALENESS_BINS = 20


def _grid_image(values: torch.Tensor, grid: list[int]) -> np.ma.MaskedArray:
    """(N,) -> (rows, cols) log10 image; slots never read (0) are masked (drawn white)."""
    rows, cols = grid
    image = np.full(rows * cols, np.nan)
    image[: values.numel()] = values.double().numpy()
    image = image.reshape(rows, cols)
    return np.ma.masked_invalid(np.log10(np.where(image > 0, image, np.nan)))


def _panels(count: int, per_row: int = 3) -> tuple[int, int]:
    cols = min(count, per_row)
    return math.ceil(count / cols), cols


def plot_windowed_usage(report: dict[str, Any], path: Path) -> Path:
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = False
    for i, (name, figures) in enumerate(report["memories"].items()):
        history = [h for h in figures["history"] if h["train_windowed_usage"] is not None]
        if not history:
            continue
        steps = [h["step"] for h in history]
        color = colors[i % len(colors)]
        ax.plot(steps, [h["train_windowed_usage"] for h in history], "-o", color=color,
                markersize=3, label=f"{name}: windowed usage (training)")
        ax.plot(steps, [h["usage"] for h in history], "--", color=color,
                label=f"{name}: usage (eval set)")
        drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no evaluations with memory usage in metrics.jsonl",
                ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel("fraction of slots")
    ax.set_title(f"Memory usage over training: slots read in the last W = "
                 f"{report['usage_window']} steps, and over the eval set")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8, loc="best", framealpha=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_staleness(report: dict[str, Any], arrays: dict[str, dict[str, torch.Tensor]],
                   path: Path) -> Path:
    rows, cols = _panels(len(report["memories"]))
    fig = Figure(figsize=(5.2 * cols, 3.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, figures) in zip(axes.flat, report["memories"].items(), strict=False):
        train = figures["train"]
        step = train["counter_step"]
        last = arrays[name]["last_step"]
        ages = (step - last[last >= 0]).double().numpy()  # (n_read,)
        slots = last.numel()
        hi = max(step + 1, 1)
        edges = np.linspace(0, hi, STALENESS_BINS + 1)
        counts, _ = np.histogram(ages, bins=edges)
        width = edges[1] - edges[0]
        ax.bar(edges[:-1], counts / slots, width=width, align="edge", color="tab:blue",
               edgecolor="white", label="selected at least once")
        ax.bar([hi + width], [train["never_selected"]], width=width, align="edge",
               color="tab:red", label="never selected")
        ax.set_yscale("log")  # stale tails of a few slots stay visible next to the bulk
        ax.set_ylim(0.5 / slots, 1.5)
        ax.set_xlabel(f"steps since last selected (at step {step})")
        ax.set_ylabel("fraction of slots (log scale)")
        ax.set_title(f"{name}\nwindowed usage {train['windowed_usage']:.2f}, "
                     f"never selected {train['never_selected']:.2f}", fontsize=10)
        ax.legend(fontsize=8, loc="best", framealpha=0.8)
        ax.grid(alpha=0.3, axis="y")
    for ax in list(axes.flat)[len(report["memories"]):]:
        ax.axis("off")
    fig.suptitle("Stale slots: steps since each slot was last selected in training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_heatmap(report: dict[str, Any], arrays: dict[str, dict[str, torch.Tensor]],
                 path: Path) -> Path:
    names = list(report["memories"])
    fig = Figure(figsize=(10, 4.6 * len(names)))
    axes = fig.subplots(len(names), 2, squeeze=False)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    for row, name in enumerate(names):
        figures = report["memories"][name]
        panels = (("eval_weight", f"eval-set read weight (log10), usage {figures['eval']['usage']:.2f}"),
                  ("train_counts", f"training reads (log10 count), usage {figures['train']['usage']:.2f}"))
        for col, (key, title) in enumerate(panels):
            ax = axes[row, col]
            image = ax.imshow(_grid_image(arrays[name][key], figures["grid"]), cmap=cmap,
                              interpolation="nearest", aspect="equal")
            ax.set_title(f"{name}\n{title}", fontsize=9)
            ax.set_xlabel("second sub-key")
            ax.set_ylabel("first sub-key")
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle("Read weight per slot (white: never read)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_usage_plots(report: dict[str, Any], arrays: dict[str, dict[str, torch.Tensor]],
                      out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [plot_windowed_usage(report, out_dir / "windowed_usage.png"),
             plot_staleness(report, arrays, out_dir / "staleness.png"),
             plot_heatmap(report, arrays, out_dir / "heatmap.png")]
    if any("usage_by_eval_tokens" in f["eval"] or "windowed_usage_by_window" in f["train"]
           for f in report["memories"].values()):
        paths.append(plot_usage_by_tokens(report, out_dir / "usage_by_tokens.png"))
    return paths


def plot_usage_by_tokens(report: dict[str, Any], path: Path) -> Path:
    """Slots read at least once against tokens read: evaluation sets (Lample's usage) and
    the last W training steps (windowed usage, W x tokens per step), one colour per memory."""
    fig = Figure(figsize=(7.5, 4.4))
    ax = fig.subplots()
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    per_step = report["tokens_per_step"]
    for i, (name, figures) in enumerate(report["memories"].items()):
        color = colors[i % len(colors)]
        by_size = figures["eval"].get("usage_by_eval_tokens", {})
        if by_size:
            points = sorted((f["tokens_read"], f["usage"]) for f in by_size.values())
            ax.plot(*zip(*points, strict=True), "--o", color=color, markersize=4,
                    label=f"{name}: usage over the eval set (Lample)")
        by_window = figures["train"].get("windowed_usage_by_window", {})
        if by_window:
            points = sorted((int(w) * per_step, u) for w, u in by_window.items())
            ax.plot(*zip(*points, strict=True), "-s", color=color, markersize=4,
                    label=f"{name}: windowed usage (last W training steps)")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"tokens read (training: W steps x {per_step:,} tokens)")
    ax.set_ylabel("fraction of slots read at least once")
    ax.set_title(f"Usage against the reads behind it (at {report['checkpoint']})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best", framealpha=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
