"""results.md / results.json / plots for a sweep, and the terminal table."""

from __future__ import annotations

import math
import os
from pathlib import Path

from rich.table import Table

from extmem.cpu_load import SHARED_CPU_THRESHOLD
from extmem.experiments.axis_plot import has_axis_chart, plot_axis
from extmem.experiments.capacity import STORAGE_COMPARED
from extmem.experiments.capacity_plots import (
    has_capacity_bars,
    has_capacity_chart,
    plot_capacity,
    plot_capacity_bars,
)
from extmem.experiments.curve_deltas import curve_delta_table
from extmem.experiments.plots import plot_curves, plot_quality, seeds_label
from extmem.experiments.saturation import saturation_table
from extmem.experiments.storage_curves import (
    has_storage_curves,
    plot_storage_curves,
    storage_along_table,
)
from extmem.experiments.tuning import tuning_tables
from extmem.experiments.tuning_plots import has_tuning_chart, plot_tuning
from extmem.experiments.usage_curves import has_usage_chart, plot_usage
from extmem.run.run_dir import write_json
from extmem.run.storage import attribute_bits

# (file, caption ({x_label}: the sweep's axis), whether the sweep has it, the plot) of the
# charts a sweep gets when its results have what they draw, in the report's order after
# curves.png and quality.png
OPTIONAL_CHARTS = (
    ("axis.png", "final loss against {x_label}", has_axis_chart, plot_axis),
    ("capacity.png", "capacity", has_capacity_chart, plot_capacity),
    ("capacity_bars.png", "bits stored per parameter and per FLOP", has_capacity_bars,
     plot_capacity_bars),
    ("capacity_curves.png", "bits stored along training", has_storage_curves,
     plot_storage_curves),
    ("usage.png", "memory usage over training", has_usage_chart, plot_usage),
)
# the tuning grid's bar chart, shown under the grid's tables
TUNING_CHART = ("tuning.png", "tuning grid", has_tuning_chart, plot_tuning)


def _pm(stat: dict | None, digits: int = 4) -> str:
    if not stat:
        return "-"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _delta(row: dict, metric: str, baseline: str, digits: str = ".4f",
           ratio: bool = False) -> str:
    """Δ of `metric` vs the baseline with its Welch 95% interval, then its significance note,
    or (`ratio`) the ratio of the means; `digits`: the format of the numbers (".3g" for
    per-FLOP figures of ~1e-12)."""
    if row["variant"] == baseline:
        return "baseline"
    comparison = row["vs_baseline"].get(metric)
    if comparison is None:
        return "-"
    low, high = comparison.get("interval95", (math.nan, math.nan))
    interval = "" if math.isnan(low) else f" [{low:+{digits}}, {high:+{digits}}]"
    if not ratio:
        return f"{comparison['diff']:+{digits}}{interval} ({comparison['note']})"
    base_mean = row[metric]["mean"] - comparison["diff"]
    means = f", x{row[metric]['mean'] / base_mean:.2f}" if base_mean > 0 else ""
    return f"{comparison['diff']:+{digits}}{interval}{means}"


def _speed(row: dict) -> str:
    """tokens/s, marked "(shared CPU)" when other processes kept the CPU busy meanwhile."""
    shared = row.get("other_cpus_busy", 0.0) >= SHARED_CPU_THRESHOLD
    return f"{row['tokens_per_s']['mean']:,.0f}{' (shared CPU)' if shared else ''}"


COLUMNS = ("variant", "params core / tables", "core FLOPs/tok", "total FLOPs/tok", "tokens/s",
           "val loss", "ppl", "bits/byte", "facts recalled", "usage / windowed (entropy, Gini)",
           "Δ loss vs baseline", "Δ facts vs baseline")


def _cells(row: dict, baseline: str) -> list[str]:
    params, flops = row["params"], row["flops_per_token"]
    usage = row.get("memory_usage")
    return [row["variant"], f"{params['core']:,} / {params['memory_tables']:,}",
            f"{flops['core']:,}", f"{flops['total']:,}", _speed(row),
            _pm(row.get("val_loss")), _pm(row.get("val_ppl"), 3), _pm(row.get("val_bpb")),
            _pm(row.get("facts_recalled"), 3),
            f"{usage['usage']:.3f} / {usage.get('train_windowed_usage', float('nan')):.3f} "
            f"(H={usage.get('entropy', float('nan')):.2f}, "
            f"G={usage.get('gini', float('nan')):.2f})" if usage else "-",
            _delta(row, "val_loss", baseline), _delta(row, "facts_recalled", baseline)]


TERMINAL_COLUMNS = ("variant", "params core / tables", "tokens/s", "val loss", "bits/byte",
                    "facts recalled", "Δ loss vs baseline")  # the full table is in results.md


def rich_table(results: dict) -> Table:
    table = Table(title=f"{results['sweep']} ({seeds_label(results)}, "
                        f"baseline {results['baseline']}; full table in results.md)")
    keep = [COLUMNS.index(c) for c in TERMINAL_COLUMNS]
    for i in keep:
        table.add_column(COLUMNS[i])
    for row in results["variants"]:
        cells = _cells(row, results["baseline"])
        table.add_row(*(cells[i] for i in keep))
    return table


def _g(stat: dict | None) -> str:
    """mean ± std with 3 significant digits (bits per parameter / per FLOP span decades)."""
    return f"{stat['mean']:.3g} ± {stat['std']:.2g}" if stat else "-"


def _storage_table(rows: list[dict], baseline: str) -> list[str]:
    """The storage meter (extmem.run.storage) beside the capacity table: stored bits from the
    loss on the values of training phrasings, recall on training vs held-out phrasings."""
    if not any("stored_bits" in row for row in rows):
        return []
    lines = ["", "Knowledge stored (storage meter: bits from the loss on the values of training "
             "phrasings, clamp(log2 |V_a| − loss, 0, log2 |V_a|) summed over facts, see "
             "extmem.run.storage; recall on training phrasings = storage, on held-out "
             "phrasings = extraction; floor: the same meter on a wrong value of each fact, "
             "what it credits a model that cannot tell right from wrong):", "",
             "| variant | facts | exposures | bits offered | stored bits | floor (wrong values) "
             "| above the floor | stored / core param | "
             "stored / param (total) | stored / training FLOP (core / total) | "
             "recall (training phrasing) | recall (held-out phrasing) | "
             "chance-corrected bits (training / held-out) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    deltas = ["", f"Stored bits vs `{baseline}` (Δ = variant − baseline, Welch's 95% interval "
              "over seeds, and the ratio of the means):", "",
              "| variant | Δ stored bits | Δ stored / training FLOP of the core | "
              "Δ stored / param (total) | Δ stored above the floor |", "|---|---|---|---|---|"]
    for row in rows:
        if "stored_bits" not in row:
            continue
        cap = row.get("capacity", {})
        facts = f"{cap['facts']:,}" if cap else "-"
        lines.append(f"| {row['variant']} | {facts} | {row.get('exposures', '-')} | "
                     f"{row['stored_bits_max']['mean']:,.0f} | {_pm(row['stored_bits'], 0)} | "
                     f"{_pm(row.get('stored_bits_floor'), 0)} | "
                     f"{_pm(row.get('stored_bits_above_floor'), 0)} | "
                     f"{_g(row.get('stored_bits_per_core_param'))} | "
                     f"{_g(row.get('stored_bits_per_param'))} | "
                     f"{_g(row.get('stored_bits_per_core_flop'))} / "
                     f"{_g(row.get('stored_bits_per_flop'))} | "
                     f"{_pm(row.get('recall_train_phrasing'), 3)} | "
                     f"{_pm(row.get('recall_heldout_phrasing'), 3)} | "
                     f"{_pm(cap.get('bits_train_phrasing'), 0)} / {_pm(cap.get('bits'), 0)} |")
        deltas.append(f"| {row['variant']} | " + " | ".join(
            _delta(row, metric, baseline, ".3g", ratio=True) for metric in STORAGE_COMPARED) + " |")
    return lines + deltas


def _attribute_table(rows: list[dict]) -> list[str]:
    """Where the stored bits are: per variant and attribute, bits stored (mean over seeds)
    and the share of that attribute's bits offered (entities x log2 |V_a|)."""
    kept = [row for row in rows if row.get("stored_bits_by_attribute") and row.get("capacity")]
    if not kept:
        return []
    attributes = list(kept[0]["stored_bits_by_attribute"])
    lines = ["", "Stored bits by attribute (mean over seeds; in brackets the share of the "
             "attribute's bits offered, entities x log2 |V_a|):", "",
             "| variant | " + " | ".join(f"{a} ({attribute_bits(a):.1f} bits/fact)"
                                       for a in attributes) + " |",
             "|---|" + "---|" * len(attributes)]
    for row in kept:
        by_attribute, entities = row["stored_bits_by_attribute"], row["capacity"]["entities"]
        lines.append(f"| {row['variant']} | " + " | ".join(
            f"{by_attribute[a]:,.0f} ({by_attribute[a] / (entities * attribute_bits(a)):.0%})"
            if a in by_attribute else "-" for a in attributes) + " |")
    return lines


def _downstream_table(rows: list[dict], baseline: str) -> list[str]:
    """Finetuning results (extmem.experiments.downstream): one row per (variant, task)."""
    if not any("downstream" in row for row in rows):
        return []
    lines = ["", "Downstream (finetuned; mean ± std over every pretraining x finetuning seed; "
             f"Δ vs `{baseline}` with Welch's t-test and its 95% interval):", "",
             "| variant | task | n | accuracy | macro-F1 | majority | Δ accuracy | Δ macro-F1 |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for task, entry in row.get("downstream", {}).items():
            versus = row.get("downstream_vs_baseline", {}).get(task, {})
            deltas = []
            for metric in ("accuracy", "macro_f1"):
                c = versus.get(metric)
                deltas.append("" if c is None or row["variant"] == baseline else
                              f"{c['diff']:+.3f} [{c['interval95'][0]:+.3f}, "
                              f"{c['interval95'][1]:+.3f}] p={c['p_value']:.2g}")
            majority = entry.get("majority_accuracy")
            lines.append(f"| {row['variant']} | {task} | {entry['n']} | "
                         f"{_pm(entry.get('accuracy'), 3)} | {_pm(entry.get('macro_f1'), 3)} | "
                         f"{'' if majority is None else f'{majority:.3f}'} | {deltas[0]} | "
                         f"{deltas[1]} |")
    return lines


def markdown(results: dict, command: str) -> str:
    lines = [f"# {results['sweep']}", "", f"Command: `{command}`", "",
             f"Seeds: {results['seeds']}; baseline: `{results['baseline']}`; mean ± sample std "
             "over seeds; Δ = variant − baseline with Welch's t-test and its 95% "
             "interval (rough with few seeds).", ""]
    if results.get("pending"):
        waiting = "; ".join(f"{v}: seeds {', '.join(map(str, seeds))}"
                            for v, seeds in results["pending"].items())
        lines += [f"**Partial report** (the sweep has not finished): still to run: {waiting}. "
                  "Rows use the finished seeds only; a variant with none is not in the table.",
                  ""]
    if results.get("not_started"):
        lines += [f"Not started in this directory ({len(results['not_started'])} of the "
                  f"sweep's variants): {', '.join(results['not_started'])}.", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(row, results["baseline"])) + " |"
              for row in results["variants"]]
    lines += ["", "Per-seed final validation loss:", ""]
    for row in results["variants"]:
        values = ", ".join(f"{v:.4f}" for v in row.get("val_loss", {}).get("values", []))
        lines.append(f"- {row['variant']}: {values}")
    lines += curve_delta_table(results)
    if any("capacity" in row for row in results["variants"]):
        lines += ["", "Knowledge stored (capacity meter; chance-corrected bits of facts "
                  "recalled, see extmem.experiments.capacity):", "",
                  "| variant | facts | facts recalled | knowledge bits | bits / core param | "
                  "bits / param (total) |", "|---|---|---|---|---|---|"]
        for row in results["variants"]:
            cap = row.get("capacity")
            if cap:
                lines.append(f"| {row['variant']} | {cap['facts']:,} | "
                             f"{_pm(row.get('facts_recalled'), 3)} | {_pm(cap['bits'], 0)} | "
                             f"{_pm(cap['bits_per_core_param'], 5)} | "
                             f"{_pm(cap['bits_per_param'], 5)} |")
    lines += _storage_table(results["variants"], results["baseline"])
    lines += _attribute_table(results["variants"])
    lines += saturation_table(results)
    lines += storage_along_table(results)
    lines += tuning_tables(results)
    if TUNING_CHART[2](results):
        lines += ["", f"![{TUNING_CHART[1]}]({TUNING_CHART[0]})"]
    lines += _downstream_table(results["variants"], results["baseline"])
    if results["warnings"]:
        lines += ["", "Warnings:", ""] + [f"- {w}" for w in results["warnings"]]
    lines += ["", "![validation curves](curves.png)", "", "![quality](quality.png)", ""]
    for file, caption, wanted, _ in OPTIONAL_CHARTS:
        if wanted(results):
            text = caption.format(x_label=results.get("x_label", ""))
            lines += [f"![{text}]({file})", ""]
    return "\n".join(lines)


def write_report(results: dict, out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(results, out / "curves.png")
    plot_quality(results, out / "quality.png")
    for file, _, wanted, plot in (*OPTIONAL_CHARTS, TUNING_CHART):
        if wanted(results):
            plot(results, out / file)
    write_json(out / "results.json", results)
    tmp = out / f"results.md.{os.getpid()}.tmp"  # sweep workers may report at once
    tmp.write_text(markdown(results, command), encoding="utf-8")
    tmp.replace(out / "results.md")


