"""capacity.png and capacity_bars.png of a capacity sweep (`group`ed variants on `facts`;
Allen-Zhu & Li 2024, *Physics of Language Models: Part 3.3*, measure knowledge capacity as
bits stored against facts offered, and bits per parameter at saturation).

capacity.png: per model family, against the facts in the corpus, facts recalled, knowledge
bits (chance-corrected recall) and, with the storage meter (extmem.run.storage), bits stored
beside the bits offered, and bits stored above the meter's floor. capacity_bars.png: each
family at its peak (the corpus where it stored the most bits: its capacity, or a lower bound
of it; extmem.experiments.saturation),
bits stored per core parameter, per parameter in all, per training FLOP of the core and per
training FLOP in all, mean and std over seeds.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from extmem.experiments.saturation import PEAK_ON, family_rows, peak_key, peak_row, peak_rows

# (suffix of the family's peak figure, axis label) of capacity_bars.png's panels
BAR_METRICS = (("_per_core_param", "bits stored per core parameter"),
               ("_per_param", "bits stored per parameter (all)"),
               ("_per_core_flop", "bits stored per training FLOP of the core"),
               ("_per_flop", "bits stored per training FLOP (all)"))


def has_capacity_chart(results: dict) -> bool:
    """Grouped variants on `facts`, unless the groups are a tuning grid's families
    (experiments/tuning.py: one corpus, many settings; results.md tabulates those)."""
    return "tuning" not in results and any("group" in row and "capacity" in row
                                           for row in results["variants"])


def _offered(ax: Axes, groups: dict[str, list[dict]]) -> None:
    """The bits the corpus holds (every fact stored in full) as a dashed line: the ceiling."""
    points = sorted({(r["capacity"]["facts"], r["capacity"]["bits_offered"])
                     for rows in groups.values() for r in rows if "bits_offered" in r["capacity"]})
    if points:
        ax.plot([f for f, _ in points], [b for _, b in points], linestyle="--",
                color="grey", label="bits offered (all stored)")


def capacity_figure(results: dict) -> Figure:
    """Per model family (`group`), against the facts offered: facts recalled (held-out
    phrasings), knowledge bits (chance-corrected recall) and, when the runs have the storage
    meter (extmem.run.storage), bits stored (from the loss on the training values) and, when
    they have its floor, bits stored above it (what wrong values do not get)."""
    groups = family_rows(results, stored_only=False)
    meter = [(key, label) for key, label in (
        ("stored_bits", "bits stored (storage meter, training values)"),
        ("stored_bits_above_floor", "bits stored above the meter's floor (wrong values)"))
        if any(key in r for rows in groups.values() for r in rows)]
    fig = Figure(figsize=(5.5 * (2 + len(meter)), 4.5))
    axes = fig.subplots(1, 2 + len(meter))
    for group, rows in groups.items():
        panels = [(axes[0], rows, [r["facts_recalled"] for r in rows]),
                  (axes[1], rows, [r["capacity"]["bits"] for r in rows])]
        for ax, (key, _) in zip(axes[2:], meter, strict=True):
            kept = [r for r in rows if key in r]
            panels.append((ax, kept, [r[key] for r in kept]))
        for ax, drawn, values in panels:
            ax.errorbar([r["capacity"]["facts"] for r in drawn], [v["mean"] for v in values],
                        yerr=[v["std"] for v in values], marker="o", capsize=3, label=group)
    axes[0].set_ylabel("facts recalled (fraction of held-out probes)")
    axes[1].set_ylabel("knowledge stored (chance-corrected bits)")
    for ax, (_, label) in zip(axes[2:], meter, strict=True):
        _offered(ax, groups)
        ax.set_ylabel(label)
        ax.set_yscale("log", nonpositive="mask")
    for ax in axes:
        ax.set_xlabel("facts in the corpus")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best", framealpha=0.8)
    fig.suptitle(f"{results['sweep']}: facts recalled and knowledge stored vs facts in the "
                 "corpus")
    fig.tight_layout()
    return fig


def plot_capacity(results: dict, path: Path) -> None:
    capacity_figure(results).savefig(path, dpi=120)


def has_capacity_bars(results: dict) -> bool:
    return "tuning" not in results and bool(peak_rows(results))


def capacity_bars_figure(results: dict) -> Figure:
    """One panel per BAR_METRICS entry, one bar per family at its peak, on the figure the peak
    is taken on (above the meter's floor where every run of the family has it; mean, std over
    seeds as the error bar), the facts offered there and that figure under each bar's name."""
    families = family_rows(results)
    keys = {group: peak_key(rows) for group, rows in families.items()}
    rows = {group: peak_row(family) for group, family in families.items()}
    fig = Figure(figsize=(5 * len(BAR_METRICS), 4.5))
    axes = fig.subplots(1, len(BAR_METRICS))
    names = [f"{group}\n({row['capacity']['facts']:,} facts, {PEAK_ON[keys[group]]})"
             for group, row in rows.items()]
    for ax, (suffix, label) in zip(axes, BAR_METRICS, strict=True):
        values = [row.get(keys[group] + suffix, {"mean": float("nan"), "std": 0.0})
                  for group, row in rows.items()]
        ax.bar(range(len(rows)), [v["mean"] for v in values], yerr=[v["std"] for v in values],
               capsize=3, color="tab:blue")
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{results['sweep']}: bits stored at each model's peak, the corpus where "
                 "it stored the most (storage meter, training values; above its floor where "
                 "measured)")
    fig.tight_layout()
    return fig


def plot_capacity_bars(results: dict, path: Path) -> None:
    capacity_bars_figure(results).savefig(path, dpi=120)
