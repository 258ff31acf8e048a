"""`extmem usage`: memory usage per layer of a trained run, as a table and PNG plots.

After Kim & Jung 2020, "Large Product Key Memory for Pretrained Language Models" (their memory
usage metric) and Lample et al. 2019 (usage; measured in docs/results.md, claims 9-11):
Lample's usage over an evaluation set can look healthy while the training-time figures show
that most slots are outdated. This report puts both side by side, per memory layer:
- evaluation set (the run's validation split): usage, KL to uniform (weighted by read weight
  and by read counts), Gini, top-50/90/99;
- training counters saved in the checkpoint: windowed usage over the last `train.usage_window`
  steps, fraction never selected, staleness (steps since each slot was last selected);
- history from metrics.jsonl: windowed usage (training) and usage (evaluation) at every eval;
- optionally usage over evaluation sets of several sizes (`eval_sizes`) and windowed usage over
  several windows (`windows`): the two metrics count slots read at least once in very
  different numbers of reads, and where they disagree (Lample's usage healthy over a large
  evaluation set while few slots are read in a short training window: a long tail of rarely
  read, rarely updated slots) depends on both sizes (docs/results.md, claim 12).
Plots go to RUN_DIR/usage/ (matplotlib, Agg backend): windowed_usage.png, staleness.png and
heatmap.png (read weight per slot reshaped to the n_keys x n_keys product-key grid).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import torch

from extmem.errors import ConfigError
from extmem.memory.stats import distribution_metrics, staleness_figures, windowed_usage
from extmem.run.evaluate import validation_loss
from extmem.run.run_dir import read_metrics
from extmem.run.session import load_trained

PLOT_DIR = "usage"
EVAL_KEYS = ("usage", "kl_uniform_weighted", "kl_uniform_counts", "gini", "top50", "top90",
             "top99")


def slot_grid(memory: Any) -> tuple[int, int]:
    """(rows, cols) to draw the slots as an image: the product-key grid n_keys x n_keys
    (slot = i1 * n_keys + i2), otherwise the squarest rectangle that holds them."""
    cfg = memory.cfg
    if getattr(cfg, "lookup", "") == "product_keys":
        n = cfg.product_keys.n_keys
        if n * n == memory.num_slots:
            return n, n
    cols = math.ceil(math.sqrt(memory.num_slots))
    return math.ceil(memory.num_slots / cols), cols


def _history(records: list[dict], name: str) -> list[dict]:
    """Per evaluation: step, windowed usage (train counters) and usage (eval set)."""
    out = []
    for record in records:
        figures = record.get("memory_usage", {}).get(name) if record.get("split") == "val" else None
        if figures:
            out.append({"step": record["step"],
                        "train_windowed_usage": figures.get("train_windowed_usage"),
                        "usage": figures.get("usage"),
                        "train_never_read": figures.get("train_never_read")})
    return out


def _eval_usage(run: Any, tokens: int, device: torch.device) -> dict[str, Any]:
    """memory name -> its usage collector after a validation pass over up to `tokens`."""
    tc = run.cfg.train
    with contextlib.ExitStack() as stack:
        collectors = {name: stack.enter_context(m.collect_usage())
                      for name, m in run.model.memory_modules()}
        validation_loss(run.model, run.data.lm, tc.eval_batch_size, tokens, tc.mask_prob,
                        device)
    return collectors


def _check_sizes(name: str, sizes: list[int]) -> list[int]:
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"usage: {name} {size!r} is not allowed; use integers >= 1")
    return sorted(set(sizes))


def usage_report(run_dir: Path, checkpoint: str | None = None,
                 overrides: list[str] | None = None, plots: bool = True,
                 eval_sizes: list[int] = (), windows: list[int] = ()) -> dict[str, Any]:
    """Figures per memory layer (JSON-ready) and, with `plots`, the PNGs in RUN_DIR/usage/.
    `eval_sizes`: also Lample's usage over the first N validation tokens, for each N (each a
    pass of its own); `windows`: also windowed usage over the last W training steps, for each W
    (from the checkpoint's counters)."""
    eval_sizes = _check_sizes("eval size", list(eval_sizes))
    windows = _check_sizes("window", list(windows))
    run = load_trained(run_dir, overrides, checkpoint)
    memories = run.model.memory_modules()
    if not memories:
        raise ConfigError(f"{run_dir}: the model has no memory layers; nothing to report")
    tc = run.cfg.train
    device = next(run.model.parameters()).device
    run.model.eval()
    collectors = _eval_usage(run, tc.eval_tokens, device)
    by_size: dict[int, dict[str, Any]] = {}
    read_tokens: dict[int, int] = {}
    for size in eval_sizes:
        by_size[size] = _eval_usage(run, size, device)
        read_tokens[size] = sum(inputs.numel() for inputs, _ in
                                run.data.lm.val_batches(tc.eval_batch_size, size))
    records = read_metrics(run_dir)
    report: dict[str, Any] = {"run_dir": str(run_dir), "checkpoint": run.checkpoint.name,
                              "step": run.step, "usage_window": tc.usage_window,
                              "tokens_per_step": tc.rows_per_step * run.cfg.data.seq_len,
                              "memories": {}}
    arrays: dict[str, dict[str, torch.Tensor]] = {}
    for name, memory in memories:
        collected, counters = collectors[name], memory.usage
        step = int(counters.step)
        evaluation = distribution_metrics(collected.weight, collected.counts)
        training = {"windowed_usage": windowed_usage(counters.last_step, step, tc.usage_window),
                    "usage": float((counters.counts > 0).double().mean()),
                    "counter_step": step,
                    **staleness_figures(counters.last_step, step)}
        if windows:
            training["windowed_usage_by_window"] = {
                str(w): windowed_usage(counters.last_step, step, w) for w in windows}
        report["memories"][name] = {
            "slots": memory.num_slots, "grid": list(slot_grid(memory)),
            "eval": {key: evaluation[key] for key in EVAL_KEYS},
            "train": training, "history": _history(records, name)}
        if eval_sizes:
            report["memories"][name]["eval"]["usage_by_eval_tokens"] = {
                str(size): {"tokens_read": read_tokens[size],
                            "usage": distribution_metrics(by_size[size][name].weight,
                                                          by_size[size][name].counts)["usage"]}
                for size in eval_sizes}
        arrays[name] = {"eval_weight": collected.weight.cpu(),
                        "train_counts": counters.counts.cpu(),
                        "last_step": counters.last_step.cpu()}
    if plots:
        from extmem.report.plots import write_usage_plots
        report["plots"] = [str(p) for p in write_usage_plots(report, arrays, run_dir / PLOT_DIR)]
    return report


def usage_tables(report: dict[str, Any]) -> list[Any]:
    """One rich Table per memory layer."""
    from rich.table import Table

    tables = []
    window = report["usage_window"]
    for name, figures in report["memories"].items():
        ev, tr = figures["eval"], figures["train"]
        table = Table(title=f"{name}: {figures['slots']:,} slots at {report['checkpoint']}",
                      show_header=True)
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_column("over")
        rows = [
            ("usage (Lample)", f"{ev['usage']:.3f}", "eval set"),
            ("KL to uniform, weighted / counts",
             f"{ev['kl_uniform_weighted']:.3f} / {ev['kl_uniform_counts']:.3f}", "eval set"),
            ("Gini", f"{ev['gini']:.3f}", "eval set"),
            ("slots holding 50 / 90 / 99 %", f"{ev['top50']:,} / {ev['top90']:,} / {ev['top99']:,}",
             "eval set"),
            (f"windowed usage (last {window} steps)", f"{tr['windowed_usage']:.3f}", "training"),
            ("usage since step 0", f"{tr['usage']:.3f}", "training"),
            ("never selected", f"{tr['never_selected']:.3f}", "training"),
            ("staleness mean / median (steps)",
             f"{tr['staleness_mean']:.1f} / {tr['staleness_median']:.1f}", "training"),
        ]
        for size, figure in ev.get("usage_by_eval_tokens", {}).items():
            rows.append((f"usage (Lample), first {int(size):,} tokens",
                         f"{figure['usage']:.3f}", f"eval set ({figure['tokens_read']:,} read)"))
        for window_steps, value in tr.get("windowed_usage_by_window", {}).items():
            rows.append((f"windowed usage (last {int(window_steps):,} steps)", f"{value:.3f}",
                         "training"))
        for row in rows:
            table.add_row(*row)
        tables.append(table)
    return tables
