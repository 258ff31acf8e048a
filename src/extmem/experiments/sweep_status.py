"""Where a sweep stands (`extmem compare SWEEP --status`): for every (variant, seed), finished,
training now (and by which process), stopped part-way (the checkpoint it resumes from), not
started, or, with `--reuse DIR`, reusable (a finished run of DIR has its very config, and
compare will copy it rather than train: experiments/reuse.py); the steps done of its budget;
and the time its training steps still need.

A sweep of many hours runs in pieces, across processes and working sessions (experiments/
compare.py); this is the view that says what is left before starting the next piece. The
time left is the steps left times the run's own seconds per step (the median of its last
logged training rates), or, for a run with none yet, the median of the runs of its `group`
(the same model at another corpus size or setting; a reusable run's rate, measured where it
was trained, counts for its group). Evaluations and compilation come on top.
Nothing is trained, written or locked: the lock probe (run/lock.py) frees what it takes.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.table import Table

from extmem.experiments.compare import reuse_source, run_dir_for, run_finished, selected_runs
from extmem.experiments.reuse import reusable_runs
from extmem.experiments.sweep import Sweep
from extmem.run.checkpoint.format import checkpoint_step, latest_checkpoint
from extmem.run.lock import holder_of
from extmem.run.run_dir import read_metrics

FINISHED, TRAINING, STOPPED, NOT_STARTED = "finished", "training", "stopped", "not started"
REUSABLE = "reusable"  # not in the sweep yet; a --reuse directory has it finished
STATES = (FINISHED, REUSABLE, TRAINING, STOPPED, NOT_STARTED)
NOTHING_TO_TRAIN = (FINISHED, REUSABLE)
RATE_RECORDS = 5  # the last logged training rates a run's seconds per step is the median of


@dataclass
class RunStatus:
    variant: str
    seed: int
    state: str                      # one of STATES
    step: int                       # steps done (a stopped run: its newest checkpoint's step)
    steps: int                      # the run's budget
    holder: str | None              # the process training it (TRAINING only)
    seconds_per_step: float | None  # measured on this run, else its group's median, else None
    seconds_left: float | None      # (steps - step) x seconds_per_step; 0 when finished
    reused_from: str | None = None  # REUSABLE only: the finished run compare would copy


def _seconds_per_step(train_records: list[dict]) -> float | None:
    """The median over the last RATE_RECORDS training log lines of tokens per step / tokens
    per second; None when there are none."""
    rates = [r["tokens"] / r["step"] / r["tokens_per_s"] for r in train_records
             if r.get("step") and r.get("tokens") and r.get("tokens_per_s")]
    return statistics.median(rates[-RATE_RECORDS:]) if rates else None


def _train_records(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r.get("split") == "train"]


def _one(sweep: Sweep, out: Path, variant: str, seed: int, reusable: dict,
         vocab: dict[str, int]) -> RunStatus:
    run_dir = run_dir_for(out, variant, seed)
    steps = sweep.runs[variant][seed].train.steps
    train_records = _train_records(run_dir)
    rate = _seconds_per_step(train_records)
    if run_finished(run_dir, steps):
        return RunStatus(variant, seed, FINISHED, steps, steps, None, rate, 0.0)
    holder = holder_of(run_dir)
    source = reuse_source(sweep, variant, seed, run_dir, reusable, vocab) if holder is None else None
    if source is not None:
        return RunStatus(variant, seed, REUSABLE, steps, steps, None,
                         _seconds_per_step(_train_records(source)), 0.0, str(source))
    newest = latest_checkpoint(run_dir)
    if holder is not None:
        state, step = TRAINING, max((r["step"] for r in train_records), default=0)
    elif newest is not None:
        state, step = STOPPED, checkpoint_step(newest)
    else:
        state, step = NOT_STARTED, 0
    return RunStatus(variant, seed, state, step, steps, holder, rate, None)


def sweep_status(sweep: Sweep, out: Path, only: list[str] | None = None,
                 reuse: list[Path] | None = None,
                 seeds: list[int] | None = None) -> list[RunStatus]:
    """Every (variant, seed) of the sweep (those `only` and `seeds` pick), seed-major as
    compare trains them, with the time left filled in from the run's own rate or its group's.
    `reuse`: sweep directories whose finished runs compare would copy in (`--reuse`)."""
    reusable, vocab = reusable_runs(reuse or []), {}
    rows = [_one(sweep, out, variant, seed, reusable, vocab)
            for variant, seed in selected_runs(sweep, only, seeds)]
    groups = {v.name: v.group or v.name for v in sweep.cfg.variants}
    measured: dict[str, list[float]] = {}
    for row in rows:
        if row.seconds_per_step is not None:
            measured.setdefault(groups[row.variant], []).append(row.seconds_per_step)
    for row in rows:
        if row.state in NOTHING_TO_TRAIN:
            continue
        if row.seconds_per_step is None and groups[row.variant] in measured:
            row.seconds_per_step = statistics.median(measured[groups[row.variant]])
        if row.seconds_per_step is not None:
            row.seconds_left = (row.steps - row.step) * row.seconds_per_step
    return rows


def status_summary(rows: list[RunStatus]) -> dict:
    """Counts per state and the training time left in all (runs without an estimate
    counted apart), as `--status --json` prints beside the runs."""
    left = [r for r in rows if r.state not in NOTHING_TO_TRAIN]
    return {"runs": [asdict(r) for r in rows],
            "counts": {state: sum(r.state == state for r in rows) for state in STATES},
            "seconds_left": sum(r.seconds_left for r in left if r.seconds_left is not None),
            "runs_without_estimate": sum(r.seconds_left is None for r in left)}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def status_table(rows: list[RunStatus], title: str) -> Table:
    table = Table(title=title)
    for column in ("variant", "seed", "state", "steps done", "s / step", "time left"):
        table.add_column(column, justify="left" if column in ("variant", "state") else "right")
    for row in rows:
        state = (f"{row.state} ({row.holder})" if row.holder is not None
                 else f"{row.state} (from {row.reused_from})" if row.reused_from else row.state)
        rate = "-" if row.seconds_per_step is None else f"{row.seconds_per_step:.3f}"
        table.add_row(row.variant, str(row.seed), state, f"{row.step:,} / {row.steps:,}", rate,
                      "" if row.state in NOTHING_TO_TRAIN else _duration(row.seconds_left))
    return table


def status_lines(summary: dict) -> list[str]:
    """The totals under the table."""
    counts = summary["counts"]
    line = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    lines = [f"runs: {line}"]
    unfinished = sum(counts.values()) - counts[FINISHED] - counts[REUSABLE]
    unknown = summary["runs_without_estimate"]
    if unfinished and unknown == unfinished:
        lines.append("training time left: no estimate yet (no run of these groups has logged "
                     "a training step)")
    elif unfinished:
        lines.append(f"training time left: {_duration(summary['seconds_left'])} of one process"
                     + (f", and {unknown} run(s) with no rate to estimate from" if unknown else "")
                     + " (evaluations and compilation extra; divide by the workers)")
    return lines
