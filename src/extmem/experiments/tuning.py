"""Tuning grids: a sweep with `tune_by = METRIC` picks, per `group` of variants (a model
family), the cell with the best mean METRIC over its finished seeds.

A fair comparison gives every family the same small tuning budget before any verdict
(docs/results.md, "Claim 16": the capacity recipe grid). Each group's first variant is its
default cell; the summary says per group the default, the winner and how far apart they
are, and results.md draws one table per group, best first:

    "tuning": {"pkm": {"metric": "stored_bits", "default": "pkm", "winner": "pkm-top32",
                       "cells": ["pkm-top32", "pkm", ...]}}   (best first)
"""

from __future__ import annotations

import math

# metric -> True where larger is better (stored bits, recall) and False where smaller is
TUNE_METRICS = {"val_loss": False, "val_bpb": False, "stored_bits": True, "facts_recalled": True}


def _mean(row: dict, metric: str) -> float:
    stat = row.get(metric)
    return stat["mean"] if stat else math.nan


def tuning_summary(rows: list[dict], group_of: dict[str, str], metric: str,
                   overrides: dict[str, list[str]] | None = None) -> dict:
    """group -> {metric, default, winner, cells (best first), winner_set} over the variants
    with a row (at least one finished seed). `group_of`: every variant of the sweep -> its
    group, in sweep order (a group's first variant is its default). Cells without `metric`
    are not ranked. `overrides`: each variant's own `set`; the winner's goes into
    `winner_set`, the settings to carry into the experiment (beside the sweep-level `set`)."""
    larger_is_better = TUNE_METRICS[metric]
    by_name = {row["variant"]: row for row in rows}
    out: dict = {}
    for group in dict.fromkeys(group_of.values()):
        members = [v for v, g in group_of.items() if g == group]
        cells = [v for v in members if v in by_name and not math.isnan(_mean(by_name[v], metric))]
        if not cells:
            continue
        cells.sort(key=lambda v: -_mean(by_name[v], metric) if larger_is_better
                   else _mean(by_name[v], metric))
        out[group] = {"metric": metric, "default": members[0], "winner": cells[0],
                      "cells": cells}
        if overrides is not None:
            out[group]["winner_set"] = list(overrides.get(cells[0], []))
    return out


def tuning_tables(results: dict) -> list[str]:
    """results.md: per group, every finished cell best first with METRIC (mean ± std over
    seeds), Δ vs the group's default cell, validation loss; the winner in bold."""
    tuning = results.get("tuning")
    if not tuning:
        return []
    by_name = {row["variant"]: row for row in results["variants"]}
    first = next(iter(tuning.values()))
    metric = first["metric"]
    direction = "largest" if TUNE_METRICS[metric] else "smallest"
    lines = ["", f"Tuning grid: per group, the cell with the {direction} mean `{metric}` wins "
             "(Δ vs the group's default cell, its first variant):"]
    for group, entry in tuning.items():
        default = by_name.get(entry["default"])
        settings = entry.get("winner_set")
        carried = ("" if settings is None else
                   f"; its own settings: `{'`, `'.join(settings)}`" if settings else
                   "; its own settings: none (the sweep's)")
        lines += ["", f"**{group}**: winner `{entry['winner']}` (default `{entry['default']}`"
                  f"{'' if default else ', not finished yet'}){carried}", "",
                  f"| cell | seeds | {metric} | Δ vs default | val loss |", "|---|---|---|---|---|"]
        for name in entry["cells"]:
            row = by_name[name]
            value = row[metric]
            delta = ("default" if name == entry["default"] else
                     "-" if default is None else f"{value['mean'] - _mean(default, metric):+.4g}")
            label = f"**{name}**" if name == entry["winner"] else name
            loss = row.get("val_loss")
            lines.append(f"| {label} | {len(row['seeds'])} | {value['mean']:.6g} ± "
                         f"{value['std']:.2g} | {delta} | "
                         f"{'-' if loss is None else format(loss['mean'], '.4f')} |")
    return lines


def tuning_lines(results: dict) -> list[str]:
    """For the terminal: one line per group of a tuning grid, its winner and its default."""
    by_name = {row["variant"]: row for row in results["variants"]}
    lines = []
    for group, entry in results.get("tuning", {}).items():
        metric, winner, default = entry["metric"], entry["winner"], entry["default"]
        versus = (f" vs the default {default}'s {_mean(by_name[default], metric):.6g}"
                  if default in by_name and default != winner else
                  " (the default)" if default == winner else f" (default {default} not finished)")
        lines.append(f"tuning {group}: best {metric} {winner} "
                     f"{_mean(by_name[winner], metric):.6g}{versus}")
    return lines
