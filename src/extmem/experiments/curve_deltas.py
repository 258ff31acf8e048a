"""Δ vs the baseline along the validation curves: at steps 100, 300, 1,000, 3,000, ... and at
the last step, and the steps where the mean curves change order.

An early lead can vanish with training, and a memory that starts behind can overtake (the
AltUp literature reports early gains that vanish; docs/results.md "Long runs"). A final number
hides both; these say where the lines stand along the way and where they cross. Each variant's
curve is the mean over its seeds at the validation steps all of them share (compare.py).
"""

from __future__ import annotations

# steps at which to read the difference (the last step is always added): a 1-3-10 ladder
LADDER = (100, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000)


def _common(row: dict, base: dict) -> tuple[list[int], list[float]]:
    """The steps both mean curves have, and variant − baseline at each."""
    base_at = dict(zip(base["curve"]["steps"], base["curve"]["mean"], strict=True))
    steps = [s for s in row["curve"]["steps"] if s in base_at]
    at = dict(zip(row["curve"]["steps"], row["curve"]["mean"], strict=True))
    return steps, [at[s] - base_at[s] for s in steps]


def _nearest(steps: list[int], target: int) -> int:
    return min(steps, key=lambda s: (abs(s - target), s))


def curve_deltas(row: dict, base: dict) -> dict | None:
    """{"steps": [...], "delta": [...], "crossings": [...]}: variant − baseline (mean curves) at
    the validation step nearest each rung of LADDER up to the last common step, and at that
    last step; `crossings`: the steps where the sign of the difference flips from the step
    before. None without a shared validation step."""
    steps, delta = _common(row, base)
    if not steps:
        return None
    last = steps[-1]
    chosen = sorted({_nearest(steps, rung) for rung in LADDER if rung <= last} | {last})
    by_step = dict(zip(steps, delta, strict=True))
    crossings = [steps[i] for i in range(1, len(steps))
                 if (delta[i] < 0) != (delta[i - 1] < 0) and delta[i] != 0 and delta[i - 1] != 0]
    return {"steps": chosen, "delta": [by_step[s] for s in chosen], "crossings": crossings}


def curve_delta_table(results: dict) -> list[str]:
    """results.md: per variant, Δ loss vs the baseline at the ladder's steps and where the
    mean curves cross."""
    rows = [row for row in results["variants"] if row.get("curve_vs_baseline")]
    if not rows:
        return []
    lines = ["", f"Δ validation loss vs `{results['baseline']}` along the curves (mean over "
             "seeds at each step; crossings: steps where the mean curves change order):", "",
             "| variant | Δ at step | crosses the baseline at |", "|---|---|---|"]
    for row in rows:
        entry = row["curve_vs_baseline"]
        deltas = ", ".join(f"{step:,}: {d:+.3f}" for step, d in zip(entry["steps"], entry["delta"],
                                                                     strict=True))
        crossings = ", ".join(f"{s:,}" for s in entry["crossings"]) or "none"
        lines.append(f"| {row['variant']} | {deltas} | {crossings} |")
    return lines
