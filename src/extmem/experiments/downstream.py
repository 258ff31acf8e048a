"""The downstream stage of a sweep: finetune every trained run on classification tasks.

Kim & Jung 2020 ("Large Product Key Memory for Pretrained Language Models", sec. 4) judge
memory models by finetuning them downstream, not only by their LM loss. A sweep file with a
`[finetune]` table has `extmem compare` finetune each (variant, seed) run, after all runs
have trained, on every task with every finetuning seed:

```toml
[finetune]
tasks = ["wordnet-supersense", "gcide-pos"]
seeds = [0, 1, 2]            # finetuning seeds, per pretraining run
runs = [0]                   # optional: finetune only the runs of these pretraining seeds
mode = "full"                # full | frozen-base | memory-only (extmem finetune --mode)
set = ["steps=120", "batch_size=16"]   # extmem finetune --set fields (FinetuneConfig)
```
Results go to RUN/finetune/<task>-<mode>-seed-<k>/ (a finished one is skipped, so the stage
resumes like the training runs). The summary gives, per variant and task, accuracy and macro-F1
over every (pretraining seed, finetuning seed) pair, the majority-class baseline, and the
difference to the baseline variant with Welch's t-test and Welch's confidence interval.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from extmem.config import require, require_valid_fields
from extmem.experiments.stats import mean_std, significance_note, welch_interval, welch_t_test
from extmem.finetune.config import MODES
from extmem.finetune.run import finetune, parse_config, slug
from extmem.run.lock import RunInUseError, RunLock

METRICS = ("accuracy", "macro_f1")


@dataclass
class DownstreamConfig:
    tasks: list[str]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    mode: str = "full"
    set: list[str] = field(default_factory=list)
    # the pretraining seeds whose runs are finetuned; [] = every run of the sweep
    runs: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        require_valid_fields(self, "finetune")
        require(len(self.tasks) > 0 and all(isinstance(t, str) and t for t in self.tasks),
                f"finetune.tasks: {self.tasks!r} must list at least one task name")
        require(len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds),
                f"finetune.seeds: {self.seeds} must be a non-empty list without repeats")
        require(self.mode in MODES, f"finetune.mode: {self.mode!r} is not allowed; choose one "
                                    f"of {', '.join(MODES)}")
        for item in self.set:
            require(not item.split("=", 1)[0].strip().removeprefix("finetune.") == "seed",
                    "finetune.set: 'seed' is set by finetune.seeds; remove it from set")
        parse_config(self.set)  # a bad field or value fails before anything trains


def result_dir(run_dir: Path, stage: DownstreamConfig, task: str, seed: int) -> Path:
    return run_dir / "finetune" / f"{slug(task)}-{stage.mode}-seed-{seed}"


def _read(path: Path) -> dict | None:
    try:
        return json.loads((path / "results.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def run_downstream(stage: DownstreamConfig, runs: list[tuple[str, int, Path]],
                   console: Console, quiet: bool) -> None:
    """Finetune every run on every task and seed that has no results yet."""
    jobs = [(variant, seed, run_dir, task, k) for variant, seed, run_dir in runs
            if not stage.runs or seed in stage.runs for task in stage.tasks for k in stage.seeds]
    for done, (variant, seed, run_dir, task, k) in enumerate(jobs, start=1):
        out = result_dir(run_dir, stage, task, k)
        label = f"[finetune {done}/{len(jobs)}] {variant} seed {seed}, {task} seed {k}"
        if _read(out) is not None:
            console.print(f"{label}: finished, skipped")
            continue
        try:  # one worker per finetune when several `extmem compare` processes share the sweep
            with RunLock(out.parent / f".busy-{out.name}", command="extmem compare (finetune)"):
                if _read(out) is None:  # not finished by another worker meanwhile
                    console.print(f"{label} -> {out}")
                    finetune(run_dir, task, stage.mode, [*stage.set, f"seed={k}"],
                             quiet=quiet, out=out)
        except RunInUseError as exc:
            console.print(f"{label}: being finetuned by {exc.holder}, skipped")


def summarize_downstream(stage: DownstreamConfig, runs: list[Path]) -> dict:
    """task -> accuracy / macro-F1 {mean, std, values} over every finished finetune of `runs`,
    the majority baseline, and how many are still missing."""
    summary = {}
    for task in stage.tasks:
        found = [r for run_dir in runs for k in stage.seeds
                 if (r := _read(result_dir(run_dir, stage, task, k))) is not None]
        entry: dict = {"n": len(found), "missing": len(runs) * len(stage.seeds) - len(found)}
        for metric in METRICS:
            values = [r[metric] for r in found]
            if values:
                mean, std = mean_std(values)
                entry[metric] = {"mean": mean, "std": std, "values": values}
        if found:
            entry["majority_accuracy"] = found[0]["majority_accuracy"]
            entry["n_eval"] = found[0]["n_eval"]
        summary[task] = entry
    return summary


def compare_downstream(row: dict, base: dict) -> dict:
    """task -> metric -> difference to the baseline variant (Welch's t-test and interval)."""
    out: dict = {}
    for task, entry in row.get("downstream", {}).items():
        other = base.get("downstream", {}).get(task, {})
        for metric in METRICS:
            if metric not in entry or metric not in other:
                continue
            a, b = entry[metric]["values"], other[metric]["values"]
            p_value = welch_t_test(a, b)
            interval = welch_interval(a, b)
            out.setdefault(task, {})[metric] = {
                "diff": entry[metric]["mean"] - other[metric]["mean"], "p_value": p_value,
                "interval95": list(interval), "note": significance_note(p_value, interval)}
    return out
