"""`extmem compare`: run every (variant, seed) of a sweep and compare them at matched compute.

Each run is an ordinary run directory `OUT/<variant>/seed-<s>/`; finished runs are skipped and
unfinished ones resumed, so a killed sweep continues where it stopped. Several `extmem compare`
processes on one sweep (cores of one machine, or machines sharing the directory) share its runs:
each skips a run whose directory another live process holds (run/lock.py) and takes the next,
and a process that skipped any reports the runs finished so far, the rest as pending.
`--reuse DIR` copies in finished runs of other sweeps that have the very same config
(experiments/reuse.py). The summary holds, per
variant, the parameter split, FLOPs per token, tokens/s, final validation loss, perplexity,
bits per byte and facts recalled (mean +- std over seeds), on `facts` the storage meter
(extmem.run.storage: stored bits, per parameter and per training FLOP, recall on training vs
held-out phrasings), memory usage, and the difference to the baseline with Welch's t-test and
Welch's confidence interval.
"""

from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path

from rich.console import Console

from extmem.cpu_load import SHARED_CPU_THRESHOLD
from extmem.errors import ConfigError
from extmem.experiments.capacity import (
    ABOVE_FLOOR_RATIOS,
    STORAGE_COMPARED,
    above_floor_ratios,
    capacity_figures,
)
from extmem.experiments.curve_deltas import curve_deltas
from extmem.experiments.downstream import compare_downstream, run_downstream, summarize_downstream
from extmem.experiments.reuse import reusable_for, reusable_runs, reuse_run
from extmem.experiments.stats import mean_std, significance_note, welch_interval, welch_t_test
from extmem.experiments.storage_curves import storage_curve
from extmem.experiments.sweep import Sweep, added_memories
from extmem.experiments.tuning import tuning_summary
from extmem.experiments.usage_curves import usage_curve
from extmem.run.lock import RunInUseError, holder_of
from extmem.run.provenance import record_session
from extmem.run.run_dir import CONFIG_FILE, RESULTS_FILE, load_run_config, read_metrics
from extmem.train.augment_run import AUGMENT_FILE, augment_run
from extmem.train.loop import TrainOptions, train
from extmem.train.writers import require_tracker

METRICS = ("val_loss", "val_ppl", "val_bpb", "facts_recalled")
# the storage meter's figures (extmem.run.storage), in a `facts` run's results
STORAGE_METRICS = ("stored_bits", "stored_bits_max", "stored_bits_floor",
                   "stored_bits_above_floor", "stored_bits_per_core_param",
                   "stored_bits_per_param", "stored_bits_per_flop", "stored_bits_per_core_flop",
                   *ABOVE_FLOOR_RATIOS, "recall_train_phrasing", "recall_heldout_phrasing")


def run_dir_for(out: Path, variant: str, seed: int) -> Path:
    return out / variant / f"seed-{seed}"


def run_finished(run_dir: Path, steps: int) -> bool:
    """A run whose results.json says it trained `steps` steps."""
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("steps") == steps
    except json.JSONDecodeError:
        return False


def reuse_source(sweep: Sweep, variant: str, seed: int, run_dir: Path,
                 reusable: dict[str, tuple[Path, int]], vocab: dict[str, int]) -> Path | None:
    """The finished run of `reusable` that compare copies into `run_dir` instead of training:
    one with the very config (experiments/reuse.py), for a run not started there (no config
    written yet) and trained from scratch (a dense-init variant is augmented, not copied)."""
    if not reusable or sweep.variant(variant).init_from or (run_dir / CONFIG_FILE).exists():
        return None
    return reusable_for(sweep.runs[variant][seed], reusable, vocab)


def _train_one(sweep: Sweep, out: Path, variant: str, seed: int, label: str,
               console: Console, quiet: bool, reusable: dict[str, tuple[Path, int]],
               vocab: dict[str, int]) -> bool:
    """Train (or resume) one run of the sweep; a dense-init variant is augmented first; a
    run not yet started whose config a finished run in `reusable` has is copied instead
    (experiments/reuse.py). Returns False when another process is training it (nothing done
    here), else True."""
    cfg = sweep.runs[variant][seed]
    run_dir = run_dir_for(out, variant, seed)
    if run_finished(run_dir, cfg.train.steps):
        console.print(f"{label} {variant} seed {seed}: finished, skipped")
        return True
    holder = holder_of(run_dir)
    source = reuse_source(sweep, variant, seed, run_dir, reusable, vocab) if holder is None else None
    if source is not None:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        if reuse_run(source, run_dir) or run_finished(run_dir, cfg.train.steps):
            console.print(f"{label} {variant} seed {seed}: the same config finished in "
                          f"{source}, reused")
            return True
        holder = holder_of(run_dir)
    if holder is None:
        try:
            _train_unfinished(sweep, out, variant, seed, label, console, quiet)
            return True
        except RunInUseError as exc:  # taken between the probe and train's own lock
            holder = exc.holder
    console.print(f"{label} {variant} seed {seed}: being trained by {holder}, skipped")
    return False


def _train_unfinished(sweep: Sweep, out: Path, variant: str, seed: int, label: str,
                      console: Console, quiet: bool) -> None:
    cfg = sweep.runs[variant][seed]
    run_dir = run_dir_for(out, variant, seed)
    resume = (run_dir / CONFIG_FILE).exists()
    init_from = sweep.variant(variant).init_from
    if init_from and not resume:
        console.print(f"{label} {variant} seed {seed}: adding memory to {init_from} seed {seed}")
        augment_run(run_dir_for(out, init_from, seed), run_dir,
                    overrides=[f"train.steps={cfg.train.steps}"],
                    memories=added_memories(sweep, variant, seed))
        resume = True
    if init_from:
        cfg = load_run_config(run_dir)  # the augmented config (data offset, memories)
    console.print(f"{label} {variant} seed {seed}: "
                  f"{'resuming' if resume else 'training'} -> {run_dir}")
    train(cfg, run_dir, TrainOptions(resume="auto" if resume else False, quiet=quiet))


def selected_variants(sweep: Sweep, only: list[str] | None) -> list[str]:
    """The variants whose names match one of the `only` patterns (fnmatch: `dense-*`); all
    of them when `only` is empty. A pattern that matches nothing is a ConfigError."""
    names = list(sweep.runs)
    if not only:
        return names
    for pattern in only:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise ConfigError(f"--only {pattern!r}: matches no variant of {sweep.cfg.name}; "
                              f"its variants: {', '.join(names)}")
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in only)]


def selected_seeds(sweep: Sweep, seeds: list[int] | None) -> list[int]:
    """The sweep's seeds that are among `seeds` (all of them when `seeds` is empty), in the
    sweep's order. A seed the sweep does not have is a ConfigError."""
    if not seeds:
        return list(sweep.cfg.seeds)
    extra = sorted(set(seeds) - set(sweep.cfg.seeds))
    if extra:
        raise ConfigError(f"--seed {extra[0]}: not among the seeds of {sweep.cfg.name} "
                          f"({', '.join(map(str, sweep.cfg.seeds))})")
    return [seed for seed in sweep.cfg.seeds if seed in seeds]


def selected_runs(sweep: Sweep, only: list[str] | None,
                  seeds: list[int] | None) -> list[tuple[str, int]]:
    """(variant, seed) of the runs `only` and `seeds` pick, seed-major: every variant's first
    seed, then the next, ... (a variant with its own subset of seeds only at those)."""
    chosen = selected_variants(sweep, only)
    return [(variant, seed) for seed in selected_seeds(sweep, seeds) for variant in chosen
            if seed in sweep.runs[variant]]


def run_sweep(sweep: Sweep, out: Path, quiet: bool = False,
              only: list[str] | None = None, reuse: list[Path] | None = None,
              seeds: list[int] | None = None) -> dict | None:
    """Train what is missing, then summarise every variant; returns the results dict.

    Runs go seed-major (every variant's first seed, then the next seed, ...), so a sweep
    stopped part-way, or run in pieces across sessions, already compares every variant.
    `only`: train just the variants matching these patterns (a piece of a large sweep) and
    report every finished run, the rest as pending; None when the baseline has no finished
    run yet (nothing to compare against). `seeds`: train just these of the sweep's seeds (a
    first pass at seed 0, or a piece small enough for the time at hand). `reuse`: sweep
    directories whose finished runs with the same config are copied in rather than trained
    again (experiments/reuse.py)."""
    console = Console(stderr=True, quiet=quiet)
    order = selected_runs(sweep, only, seeds)
    reusable, vocab = reusable_runs(reuse or []), {}
    for variant, seed in order:  # a tracker that is not installed: before anything is written
        require_tracker(sweep.runs[variant][seed].train)
    out.mkdir(parents=True, exist_ok=True)
    record_session(out, "compare", sweep=str(sweep.path), runs=len(order))  # OUT/provenance.json
    elsewhere = [(variant, seed) for done, (variant, seed) in enumerate(order, start=1)
                 if not _train_one(sweep, out, variant, seed, f"[{done}/{len(order)}]",
                                   console, quiet, reusable, vocab)]
    if sweep.cfg.finetune is not None:
        run_downstream(sweep.cfg.finetune, [(v, s, run_dir_for(out, v, s)) for v, s in order
                                            if (v, s) not in elsewhere], console, quiet)
    # the other processes may have finished theirs while this one trained
    elsewhere = [(variant, seed) for variant, seed in elsewhere
                 if not run_finished(run_dir_for(out, variant, seed),
                                  sweep.runs[variant][seed].train.steps)]
    if elsewhere:
        console.print(f"{len(elsewhere)} run(s) still training in other processes: reporting "
                      "the finished runs, the rest as pending")
    partial = bool(elsewhere) or len(order) < sum(map(len, sweep.runs.values()))
    if partial and not finished_seeds(sweep, out, sweep.cfg.baseline):
        console.print(f"no report yet: the baseline {sweep.cfg.baseline!r} has no finished run")
        return None
    return summarize(sweep, out, partial=partial)


def source_steps(run_dir: Path) -> int:
    """Steps a dense-init run's source trained before the memory was added (0 = scratch)."""
    path = run_dir / AUGMENT_FILE
    return int(json.loads(path.read_text(encoding="utf-8"))["source_step"]) if path.is_file() else 0


def _curve(run_dir: Path) -> dict[int, float]:
    """Validation loss by total step (a dense-init run's steps continue its source's)."""
    offset = source_steps(run_dir)
    return {offset + r["step"]: r["val_loss"] for r in read_metrics(run_dir)
            if r.get("split") == "val" and r.get("val_loss") is not None}


def _train_means(run_dir: Path, keys: tuple[str, ...]) -> dict[str, float]:
    """The mean of each of `keys` over a run's train log lines (nan where none has it),
    from one read of its metrics."""
    rows = [r for r in read_metrics(run_dir) if r.get("split") == "train"]
    means = {}
    for key in keys:
        values = [r[key] for r in rows if key in r]
        means[key] = sum(values) / len(values) if values else math.nan
    return means


def _usage(results: dict) -> dict[str, float]:
    layers = list(results.get("memory_usage", {}).values())
    if not layers:
        return {}
    return {key: sum(layer[key] for layer in layers) / len(layers)
            for key in ("usage", "train_windowed_usage", "entropy", "gini", "load_cv",
                        "train_never_read", "train_staleness_mean")
            if all(key in la for la in layers)}


def finished_seeds(sweep: Sweep, out: Path, variant: str) -> list[int]:
    """The seeds of `variant` whose run has finished its budget."""
    return [seed for seed, cfg in sweep.runs[variant].items()
            if run_finished(run_dir_for(out, variant, seed), cfg.train.steps)]


def summarize_variant(sweep: Sweep, out: Path, variant: str,
                      seeds: list[int] | None = None) -> dict:
    seeds = list(sweep.runs[variant]) if seeds is None else seeds
    results = [json.loads((run_dir_for(out, variant, s) / RESULTS_FILE).read_text())
               for s in seeds]
    results = [{**r, **above_floor_ratios(r)} for r in results]
    offset = source_steps(run_dir_for(out, variant, seeds[0]))
    row: dict = {"variant": variant, "seeds": seeds, "params": results[0]["params"],
                 "flops_per_token": results[0]["flops_per_token"],
                 "steps": offset + results[0]["steps"],
                 "tokens": results[0]["tokens"] * (offset + results[0]["steps"]) // results[0]["steps"]}
    if offset:
        row["init_from"] = sweep.variant(variant).init_from
        row["source_steps"] = offset
    for metric in (*METRICS, *STORAGE_METRICS):
        values = [r[metric] for r in results if r.get(metric) is not None]
        if values:
            mean, std = mean_std(values)
            row[metric] = {"mean": mean, "std": std, "values": values}
    by_attribute = [r["stored_bits_by_attribute"] for r in results
                    if "stored_bits_by_attribute" in r]
    if by_attribute:  # where the bits are, mean over seeds
        row["stored_bits_by_attribute"] = {a: mean_std([b[a] for b in by_attribute])[0]
                                           for a in by_attribute[0]}
    recalled = row.get("facts_recalled", {}).get("values", [])
    cfg = sweep.runs[variant][seeds[0]]
    capacity = capacity_figures(cfg, recalled, row["params"],
                                row.get("recall_train_phrasing", {}).get("values"))
    if capacity is not None:
        row["capacity"] = capacity
    if cfg.train.exposures:
        row["exposures"] = cfg.train.exposures
    group = sweep.variant(variant).group
    if group:
        row["group"] = group
    if sweep.variant(variant).x is not None:
        row["x"] = sweep.variant(variant).x
    logged = [_train_means(run_dir_for(out, variant, s), ("tokens_per_s", "other_cpus_busy"))
              for s in seeds]
    speed = [m["tokens_per_s"] for m in logged]
    row["tokens_per_s"] = dict(zip(("mean", "std"), mean_std(speed), strict=True))
    others = [m["other_cpus_busy"] for m in logged if not math.isnan(m["other_cpus_busy"])]
    if others:  # extmem.cpu_load: how much other processes shared the CPU meanwhile
        row["other_cpus_busy"] = sum(others) / len(others)
    usages = [_usage(r) for r in results]
    if usages and usages[0]:
        row["memory_usage"] = {k: mean_std([u[k] for u in usages])[0] for k in usages[0]}
    if sweep.cfg.finetune is not None:
        stage = sweep.cfg.finetune
        row["downstream"] = summarize_downstream(
            stage, [run_dir_for(out, variant, s) for s in seeds if not stage.runs or s in stage.runs])
    usage = usage_curve([(run_dir_for(out, variant, s), offset) for s in seeds])
    if usage is not None:
        row["usage_curve"] = usage
    storage = storage_curve([(run_dir_for(out, variant, s), offset) for s in seeds],
                            row["steps"], cfg.train.exposures)
    if storage is not None:
        row["storage_curve"] = storage
    curves = [_curve(run_dir_for(out, variant, s)) for s in seeds]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    row["curve"] = {"steps": steps,
                    "mean": [mean_std([c[s] for c in curves])[0] for s in steps],
                    "std": [mean_std([c[s] for c in curves])[1] for s in steps]}
    return row


def _compare(row: dict, base: dict, metric: str) -> dict | None:
    if metric not in row or metric not in base:
        return None
    a, b = row[metric]["values"], base[metric]["values"]
    p_value = welch_t_test(a, b)
    interval = welch_interval(a, b)
    return {"diff": row[metric]["mean"] - base[metric]["mean"], "p_value": p_value,
            "interval95": list(interval), "note": significance_note(p_value, interval)}


def summarize(sweep: Sweep, out: Path, partial: bool = False) -> dict:
    """Every variant's summary and its difference to the baseline. `partial`: only the runs
    that have finished (a sweep still running, or stopped part-way), the rest listed as
    pending; the baseline needs at least one finished run."""
    done = {v: finished_seeds(sweep, out, v) if partial else list(sweep.runs[v])
            for v in sweep.runs}
    if not done[sweep.cfg.baseline]:
        raise ConfigError(f"{out}: the baseline {sweep.cfg.baseline!r} has no finished run yet; "
                          "nothing to compare against")
    rows = [summarize_variant(sweep, out, v, seeds) for v, seeds in done.items() if seeds]
    base = next(r for r in rows if r["variant"] == sweep.cfg.baseline)
    warnings = []
    base_core = base["flops_per_token"]["core"]
    for row in rows:
        row["vs_baseline"] = {m: c for m in ("val_loss", "facts_recalled", "val_bpb",
                                             *STORAGE_COMPARED)
                              if (c := _compare(row, base, m)) is not None}
        if "downstream" in row:
            row["downstream_vs_baseline"] = compare_downstream(row, base)
        along = curve_deltas(row, base) if row is not base else None
        if along is not None:
            row["curve_vs_baseline"] = along
        core = row["flops_per_token"]["core"]
        gap = abs(core - base_core) / base_core
        row["core_flops_ratio"] = core / base_core
        if gap > sweep.cfg.core_flops_tolerance:
            warnings.append(f"{row['variant']}: core FLOPs/token {core:,} differ from the "
                            f"baseline's {base_core:,} by {gap:.1%} (tolerance "
                            f"{sweep.cfg.core_flops_tolerance:.0%})")
    shared = [f"{row['variant']} ({row['other_cpus_busy']:.2f})" for row in rows
              if row.get("other_cpus_busy", 0.0) >= SHARED_CPU_THRESHOLD]
    if shared:
        warnings.append("tokens/s are not timings for the runs that shared the CPU with other "
                        "processes (CPUs those kept busy on average while they trained): "
                        + ", ".join(shared))
    budget = {name: value for name in ("steps", "tokens", "exposures")
              if (value := getattr(sweep.cfg, name))}
    return {"sweep": sweep.cfg.name, "sweep_file": str(sweep.path), "out": str(out),
            "baseline": sweep.cfg.baseline, "seeds": sweep.cfg.seeds, "budget": budget,
            **({"x_label": sweep.cfg.x_label, "x_scale": sweep.cfg.x_scale}
               if sweep.cfg.x_label else {}),
            **({"references": sweep.cfg.references} if sweep.cfg.references else {}),
            "variants": rows, "warnings": warnings, **_unfinished(sweep, out, done),
            **({"tuning": tuning_summary(rows, {v.name: v.group for v in sweep.cfg.variants},
                                         sweep.cfg.tune_by,
                                         {v.name: v.set for v in sweep.cfg.variants})}
               if sweep.cfg.tune_by else {})}


def _unfinished(sweep: Sweep, out: Path, done: dict[str, list[int]]) -> dict:
    """`pending`: variant -> its unfinished seeds, for the variants begun in `out` (a run
    directory of any seed there); `not_started`: the variants with none, which a piece of the
    sweep in its own directory (--only ... --out DIR) never trains there."""
    begun = {v for v in sweep.runs if any(run_dir_for(out, v, s).exists() for s in sweep.runs[v])}
    return {"pending": {v: [x for x in sweep.runs[v] if x not in seeds]
                        for v, seeds in done.items()
                        if len(seeds) < len(sweep.runs[v]) and v in begun},
            "not_started": [v for v in sweep.runs if v not in begun]}
