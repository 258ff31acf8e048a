"""`extmem compare SWEEP --fill-results`: every finished run of a sweep (those `--only` and
`--seed` pick) gets the figures its results.json lacks, measured on its final checkpoint
(extmem.run.fill_results), so that a report can show a figure a newer extmem measures (the
storage meter's floor, say) for runs trained before it existed. Nothing is trained; a run
whose last training or filling was done by this very checkout (the same clean git commit) has
every figure already and is not evaluated again."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from extmem.errors import ExtmemError
from extmem.experiments.compare import run_dir_for, run_finished, selected_runs
from extmem.experiments.sweep import Sweep
from extmem.run.fill_results import fill_run
from extmem.run.provenance import git_revision, read_provenance


def measured_by_this_checkout(run_dir: Path) -> bool:
    """The run's newest train or fill-results session ran this clean git commit."""
    here = git_revision()
    if here is None or here.get("dirty") is not False:
        return False
    sessions = [s for s in read_provenance(run_dir) if s.get("kind") in ("train", "fill-results")]
    last = (sessions[-1].get("git") or {}) if sessions else {}
    return last.get("commit") == here["commit"] and last.get("dirty") is False


def fill_sweep(sweep: Sweep, out: Path, only: list[str] | None, seeds: list[int] | None,
               console: Console) -> list[str]:
    """Fill every finished run picked; one line per run that could not be filled (its error),
    the others go on."""
    order = [(variant, seed) for variant, seed in selected_runs(sweep, only, seeds)
             if run_finished(run_dir_for(out, variant, seed),
                             sweep.runs[variant][seed].train.steps)]
    problems = []
    for done, (variant, seed) in enumerate(order, start=1):
        run_dir = run_dir_for(out, variant, seed)
        label = f"[{done}/{len(order)}] {variant} seed {seed}"
        if measured_by_this_checkout(run_dir):
            console.print(f"{label}: measured by this checkout already")
            continue
        try:
            with console.status(f"{label}: evaluating its final checkpoint"):
                added, _ = fill_run(run_dir)
        except ExtmemError as exc:
            problems.append(f"{variant} seed {seed}: {exc}")
            console.print(f"{label}: not filled: {exc}")
            continue
        console.print(f"{label}: " + (f"added {', '.join(added)}" if added else
                                      "had every figure"))
    return problems
