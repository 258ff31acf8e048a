"""Storage along training, per model of a capacity sweep: when memorising starts.

Allen-Zhu & Li 2024 (*Physics of Language Models: Part 3.3*, sec. 5) measure knowledge
capacity at a fixed number of exposures per fact; a model that has not started memorising by the
end of its budget stores little whatever its parameters. The storage meter (extmem.run.storage)
runs at every evaluation, so each run's metrics.jsonl has the bits stored along training. This
module reads them back:

- `storage_curve`: a variant's stored bits (and bits above the meter's floor where the runs
  measured it) at each evaluated step, mean over its seeds, with the exposures each step is
  (every training sentence seen `exposures` times over the run's steps);
- `storage_along_table`: per model and corpus size, the share of the bits offered that is stored
  at a quarter, half, three quarters and all of the budget (the last evaluation at or before
  each), which shows a plateau and, or not, the onset of memorising;
- capacity_curves.png: one panel per model, stored share against exposures, one line per
  corpus size.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure

from extmem.experiments.saturation import family_rows
from extmem.experiments.usage_curves import mean_at_shared_steps
from extmem.run.run_dir import read_metrics

# the storage meter's figures read from each evaluation (extmem.run.storage)
CURVE_KEYS = ("stored_bits", "stored_bits_above_floor")

# the fractions of the budget at which storage_along_table reads each curve
BUDGET_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def run_storage_curve(run_dir: Path, offset: int = 0) -> dict[int, dict[str, float]]:
    """step (+ offset) -> the storage meter's figures at that evaluation (a resumed run's later
    record of a step wins)."""
    curve: dict[int, dict[str, float]] = {}
    for record in read_metrics(run_dir):
        if record.get("split") == "val" and record.get("stored_bits") is not None:
            curve[offset + record["step"]] = {key: float(record[key]) for key in CURVE_KEYS
                                              if record.get(key) is not None}
    return curve


def storage_curve(runs: list[tuple[Path, int]], steps: int, exposures: float | None) -> dict | None:
    """Mean over runs (run_dir, step offset) at the steps all of them evaluated, with the
    exposures per fact at each step when the budget was set in exposures (`steps` of training
    for `exposures`); None when the runs have no storage meter."""
    out = mean_at_shared_steps([run_storage_curve(run_dir, offset) for run_dir, offset in runs],
                               CURVE_KEYS)
    if out is None or not out["steps"]:
        return None
    if exposures:
        out["exposures"] = [exposures * step / steps for step in out["steps"]]
    return out


def stored_share_at(row: dict, fraction: float) -> float | None:
    """Stored bits / bits offered at the last evaluation at or before `fraction` of the run's
    steps; None when there is none."""
    curve, offered = row.get("storage_curve"), row["capacity"].get("bits_offered")
    if not curve or not offered:
        return None
    limit = fraction * row["steps"]
    kept = [bits for step, bits in zip(curve["steps"], curve["stored_bits"], strict=True)
            if step <= limit]
    return kept[-1] / offered if kept else None


def has_storage_curves(results: dict) -> bool:
    return "tuning" not in results and any(
        row.get("storage_curve") for rows in family_rows(results).values() for row in rows)


def storage_along_table(results: dict) -> list[str]:
    """Markdown lines: per model and corpus size, the share of bits offered stored at each of
    BUDGET_FRACTIONS of the budget (empty when no run has a storage curve)."""
    if not has_storage_curves(results):
        return []
    header = " | ".join(f"{fraction:.0%} of the budget" for fraction in BUDGET_FRACTIONS)
    lines = ["", "Storage along training (stored bits as a share of the bits offered, at the "
             "last evaluation at or before each fraction of the budget, mean over seeds; a "
             "plateau that ends late, or never, shows when memorising starts; see "
             "extmem.experiments.storage_curves):", "",
             f"| model | facts | exposures | {header} |",
             "|---|---|---|" + "---|" * len(BUDGET_FRACTIONS)]
    for group, rows in family_rows(results).items():
        for row in rows:
            if not row.get("storage_curve"):
                continue
            shares = [stored_share_at(row, fraction) for fraction in BUDGET_FRACTIONS]
            cells = " | ".join("-" if s is None else f"{s:.1%}" for s in shares)
            lines.append(f"| {group} | {row['capacity']['facts']:,} | "
                         f"{row.get('exposures', '-')} | {cells} |")
    return lines


def storage_curves_figure(results: dict) -> Figure:
    """One panel per model: stored bits / bits offered against exposures per fact (training
    steps when the budget was set in steps), one line per corpus size."""
    families = {group: [r for r in rows if r.get("storage_curve")]
                for group, rows in family_rows(results).items()}
    families = {group: rows for group, rows in families.items() if rows}
    columns = min(4, len(families))
    n_rows = -(-len(families) // columns)
    fig = Figure(figsize=(4.5 * columns, 3.6 * n_rows))
    axes = fig.subplots(n_rows, columns, squeeze=False).flatten()
    palette = colormaps["viridis"]
    sizes = sorted({r["capacity"]["facts"] for rows in families.values() for r in rows})
    for ax, (group, rows) in zip(axes, families.items(), strict=False):
        for row in rows:
            curve, offered = row["storage_curve"], row["capacity"]["bits_offered"]
            x = curve.get("exposures", curve["steps"])
            color = palette(sizes.index(row["capacity"]["facts"]) / max(1, len(sizes) - 1))
            ax.plot(x, [b / offered for b in curve["stored_bits"]], marker=".", color=color,
                    label=f"{row['capacity']['facts']:,} facts")
        ax.set_title(group, fontsize=10)
        ax.set_xlabel("exposures per fact" if "exposures" in rows[0]["storage_curve"]
                      else "training step")
        ax.set_ylabel("stored / bits offered")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    for ax in axes[len(families):]:
        ax.set_visible(False)
    fig.suptitle(f"{results['sweep']}: bits stored along training, per model and corpus size "
                 "(storage meter, mean over seeds)")
    fig.tight_layout()
    return fig


def plot_storage_curves(results: dict, path: Path) -> None:
    storage_curves_figure(results).savefig(path, dpi=120)
