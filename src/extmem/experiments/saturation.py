"""Knowledge capacity at saturation, per model family of a capacity sweep (Allen-Zhu & Li 2024,
*Physics of Language Models: Part 3.3*: a model's capacity is the bits it stores once the corpus
offers more than it can hold, reported as bits per parameter).

A family (`group` in the sweep) is one model trained on corpora of growing size (`facts`). Its
capacity is its peak: the most bits stored (storage meter, extmem.run.storage) over the corpus
sizes it ran, counted above the meter's floor (what it credits wrong values) when every run of
the family measured the floor, since the floor grows with the corpus whether or not the model
memorises anything. Whether the peak is a capacity or only a lower bound depends on the curve:

- past its peak: a larger corpus stored fewer bits (the model reached its capacity, or a larger
  corpus made it fail to start memorising at this budget: the curves say which);
- saturated: the largest corpus stored less than SATURATION_GROWTH times the bits of the one
  before it;
- still growing: the peak is at the largest corpus and still rising, so the capacity is at
  least the peak.

`saturation_table` writes the family table, each family's peak against the baseline
family's peak (Welch's interval over seeds; docs/results.md, "Capacity"), and, when the sweep
names `references` (the dense widths), each other family's peak against the best reference on
each figure: a memory is then measured against the strongest dense model per core FLOP and per
parameter, not only against the dense model of its own core.
"""

from __future__ import annotations

import math

from extmem.experiments.stats import mean_interval, welch_interval

# stored bits that grow by less than this factor from one corpus size to the next count as
# saturated (the capacity sweep triples the corpus from one size to the next)
SATURATION_GROWTH = 1.1

# (results key, column label) of the per-family peak compared with the baseline family's peak
PEAK_COMPARED = (("stored_bits", "stored bits"),
                 ("stored_bits_per_core_flop", "stored / training FLOP of the core"),
                 ("stored_bits_per_param", "stored / param (total)"),
                 ("stored_bits_above_floor", "stored above the meter's floor"),
                 ("stored_bits_above_floor_per_core_flop", "above the floor / training FLOP of "
                  "the core"),
                 ("stored_bits_above_floor_per_param", "above the floor / param (total)"),
                 # the lookups' FLOPs counted too (extmem.model.accounting): what a memory costs
                 ("stored_bits_above_floor_per_flop", "above the floor / training FLOP, "
                  "lookups included"))

# (suffix of the peak's figure, column label) of the per-parameter and per-FLOP columns
PEAK_RATIOS = (("_per_core_param", "peak / core param"),
               ("_per_param", "peak / param (total)"),
               ("_per_core_flop", "peak / training FLOP of the core"),
               ("_per_flop", "peak / training FLOP, lookups included"))

# how the family table names the figure its peak is taken on (`peak_key`)
PEAK_ON = {"stored_bits_above_floor": "above the floor", "stored_bits": "stored bits"}


def family_rows(results: dict, stored_only: bool = True) -> dict[str, list[dict]]:
    """group -> its rows, by facts offered (rows without a group or a capacity are left out,
    and with `stored_only` those without the storage meter)."""
    groups: dict[str, list[dict]] = {}
    for row in results["variants"]:
        if "group" in row and "capacity" in row and (not stored_only or "stored_bits" in row):
            groups.setdefault(row["group"], []).append(row)
    return {g: sorted(rows, key=lambda r: r["capacity"]["facts"]) for g, rows in groups.items()}


def peak_key(rows: list[dict]) -> str:
    """The figure a family's peak is taken on: bits stored above the meter's floor when every
    row has it, else bits stored."""
    return ("stored_bits_above_floor" if all("stored_bits_above_floor" in r for r in rows)
            else "stored_bits")


def peak_row(rows: list[dict]) -> dict:
    """The row with the most bits stored (above the floor where every row has it; mean over
    seeds); the smaller corpus on a tie."""
    key = peak_key(rows)
    return max(rows, key=lambda r: (r[key]["mean"], -r["capacity"]["facts"]))


def peak_rows(results: dict) -> dict[str, dict]:
    """group -> its peak row (the bits it stores at saturation, or a lower bound of them)."""
    return {group: peak_row(rows) for group, rows in family_rows(results).items()}


def saturation_state(rows: list[dict]) -> str:
    """"past its peak", "saturated", "still growing", "one corpus size" or "stores nothing"
    (see the module docstring), with the ratio of stored bits (above the floor where every row
    has it: `peak_key`) that decides it."""
    if len(rows) < 2:
        return "one corpus size"
    key = peak_key(rows)
    peak, last, before = peak_row(rows), rows[-1], rows[-2]
    if peak[key]["mean"] <= 0:
        return "stores nothing at any corpus size"
    if peak is not last:
        share = last[key]["mean"] / peak[key]["mean"]
        return f"past its peak (x{share:.2f} of it at {last['capacity']['facts']:,} facts)"
    growth = (last[key]["mean"] / before[key]["mean"] if before[key]["mean"] > 0 else math.inf)
    kind = "saturated" if growth < SATURATION_GROWTH else "still growing"
    return f"{kind} (x{growth:.2f} over {before['capacity']['facts']:,} facts)"


def _stat(stat: dict, fmt: str) -> str:
    """mean ± std, then the 95% interval of the mean when there are 2+ seeds."""
    values = stat.get("values", [stat["mean"]])
    text = f"{stat['mean']:{fmt}} ± {stat['std']:{fmt}}"
    if len(values) < 2:
        return text
    low, high = mean_interval(values)
    return f"{text} [{low:{fmt}}, {high:{fmt}}]"


def _versus(row: dict, base: dict, key: str) -> str:
    """row − base of `key` with Welch's 95% interval over seeds, and the ratio of the means;
    "-" when either lacks it (a run measured before the figure existed)."""
    if key not in row or key not in base:
        return "-"
    a, b = row[key].get("values", [row[key]["mean"]]), base[key].get("values", [base[key]["mean"]])
    diff = row[key]["mean"] - base[key]["mean"]
    low, high = welch_interval(a, b)
    interval = "" if math.isnan(low) else f" [{low:+.3g}, {high:+.3g}]"
    ratio = f", x{row[key]['mean'] / base[key]['mean']:.2f}" if base[key]["mean"] > 0 else ""
    return f"{diff:+.3g}{interval}{ratio} (seeds {len(a)} / {len(b)})"


def _family_line(group: str, rows: list[dict], sizes: list[int]) -> str:
    """One family's line: its figure at every corpus size (share of the bits offered), the
    figure its peak is taken on, the peak, stored bits there, the peak's ratios and its state."""
    key = peak_key(rows)
    by_size = {r["capacity"]["facts"]: r for r in rows}
    cells = ["-" if (row := by_size.get(size)) is None else
             f"{row[key]['mean']:,.0f} ({row[key]['mean'] / row['capacity']['bits_offered']:.0%})"
             for size in sizes]
    peak = peak_row(rows)
    ratios = [_stat(peak[key + suffix], ".3g") if key + suffix in peak else "-"
              for suffix, _ in PEAK_RATIOS]
    params = peak["params"]
    return (f"| {group} | {params['core']:,} / {params['total']:,} | " + " | ".join(cells)
            + f" | {PEAK_ON[key]} | {_stat(peak[key], ',.0f')} "
            f"({peak['capacity']['facts']:,} facts) | {_stat(peak['stored_bits'], ',.0f')} | "
            + " | ".join(ratios) + f" | {saturation_state(rows)} |")


def saturation_table(results: dict) -> list[str]:
    """Markdown lines: per family, its figure at every corpus size, its peak per core
    parameter, per parameter in all, per training FLOP of the core and per training FLOP in
    all (the lookups included), and its state; then each
    family's peak against the best reference family's on each figure (when the sweep names
    `references`) and against the baseline family's (empty when the sweep has no families)."""
    families = family_rows(results)
    if not families or "tuning" in results:
        return []
    sizes = sorted({r["capacity"]["facts"] for rows in families.values() for r in rows})
    lines = ["", "Capacity per model (storage meter; each model's peak over the corpus sizes "
             "it ran, on the bits stored above the meter's floor where every run of the model "
             "measured it (`peak on`), else on the bits stored; the figure at each corpus "
             "size with its share of the bits offered; mean ± std over seeds and the 95% "
             "interval of the mean; see extmem.experiments.saturation):", "",
             "| model | params core / total | " + " | ".join(f"{s:,} facts" for s in sizes)
             + " | peak on | peak | stored bits at the peak | "
             + " | ".join(label for _, label in PEAK_RATIOS) + " | state |",
             "|---|---|" + "---|" * (len(sizes) + 4 + len(PEAK_RATIOS))]
    lines += [_family_line(group, rows, sizes) for group, rows in families.items()]
    peaks = {group: peak_row(rows) for group, rows in families.items()}
    references = [g for g in results.get("references", []) if g in families]
    if references:
        best = {key: _best_reference(peaks, references, key) for key, _ in PEAK_COMPARED}
        lines += _peaks_against(
            "Each model's peak vs the best reference model on each figure (references: "
            + ", ".join(f"`{g}`" for g in references) + "; on each figure the reference whose "
            "peak is highest, named in the cell): Δ = model − that reference, Welch's 95% "
            "interval over seeds, the ratio of the means:", peaks, best, set(references),
            name_reference=True)
    base_row = next((r for r in results["variants"] if r["variant"] == results["baseline"]), None)
    if base_row is None or base_row.get("group") not in families:
        return lines
    base_group = base_row["group"]
    return lines + _peaks_against(
        f"Each model's peak vs the peak of `{base_group}` (the baseline's model, "
        f"{peaks[base_group]['capacity']['facts']:,} facts): Δ = model − {base_group}, Welch's "
        "95% interval over seeds, the ratio of the means; last, the bits the model stores "
        f"beyond {base_group} per parameter it adds (Δ of the figure the peaks are taken on, "
        "over the difference in parameters in all: what each added parameter bought):", peaks,
        dict.fromkeys((key for key, _ in PEAK_COMPARED), base_group), {base_group},
        per_added_param=True)


def _best_reference(peaks: dict[str, dict], references: list[str], key: str) -> str | None:
    """The reference family whose peak has the highest mean of `key` (None when none has it)."""
    having = [g for g in references if key in peaks[g]]
    return max(having, key=lambda g: peaks[g][key]["mean"]) if having else None


def gain_per_added_param(peak: dict, base: dict) -> str:
    """(peak − base) of the figure both peaks can be taken on (above the floor where both have
    it) per parameter `peak`'s model adds over `base`'s, with Welch's 95% interval over seeds
    scaled alike; "-" when it adds none."""
    added = peak["params"]["total"] - base["params"]["total"]
    if added <= 0:
        return "-"
    key = ("stored_bits_above_floor" if "stored_bits_above_floor" in peak
           and "stored_bits_above_floor" in base else "stored_bits")
    a, b = peak[key].get("values", [peak[key]["mean"]]), base[key].get("values", [base[key]["mean"]])
    low, high = welch_interval(a, b)
    interval = "" if math.isnan(low) else f" [{low / added:+.3g}, {high / added:+.3g}]"
    return (f"{(peak[key]['mean'] - base[key]['mean']) / added:+.3g}{interval} "
            f"({PEAK_ON[key]}, {added:,} added)")


def _peaks_against(heading: str, peaks: dict[str, dict], against: dict[str, str | None],
                   skip: set[str], name_reference: bool = False,
                   per_added_param: bool = False) -> list[str]:
    """Markdown lines: each family's peak (but those in `skip`) against the peak of the family
    `against[key]` on each figure of PEAK_COMPARED ("-" where there is none), naming that
    family in the cell with `name_reference`; with `per_added_param` a last column of the bits
    gained per parameter added over the (one) family compared with."""
    added = ["Δ per added parameter"] if per_added_param else []
    lines = ["", heading, "",
             "| model | " + " | ".join([f"Δ {label}" for _, label in PEAK_COMPARED] + added)
             + " |", "|---|" + "---|" * (len(PEAK_COMPARED) + len(added))]
    for group, peak in peaks.items():
        if group in skip:
            continue
        cells = []
        for key, _ in PEAK_COMPARED:
            ref = against[key]
            cell = "-" if ref is None else _versus(peak, peaks[ref], key)
            cells.append(f"{cell} vs {ref}" if name_reference and cell != "-" else cell)
        if per_added_param:
            cells.append(gain_per_added_param(peak, peaks[against["stored_bits"]]))
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return lines
