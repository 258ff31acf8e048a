"""The training loop: AdamW + warmup/cosine, clipping, periodic eval and atomic checkpoints.

A run killed at any moment and resumed with `--resume` ends with the same weights and losses
as an uninterrupted run: batches and masks depend only on (seed, step), and checkpoints hold
model, optimizer, RNG state and the step.
"""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from extmem.distributed.checkpoint import localizer, save_distributed_checkpoint
from extmem.distributed.context import init_distributed, rank_device
from extmem.distributed.parallel import (
    NullWriter,
    check_distributed_config,
    data_parallel,
    replica_divergence,
)
from extmem.distributed.tables import shard_tables
from extmem.evaluate import evaluate
from extmem.model import flops_per_token, parameter_counts
from extmem.train.checkpoint import (
    latest_checkpoint,
    load_model_state,
    load_optimizer_state,
    restore_rng_state,
    save_checkpoint,
)
from extmem.train.config import RunConfig
from extmem.train.objective import batch_loss
from extmem.train.optim import build_optimizer, lr_factor, set_lr
from extmem.train.run_dir import (
    RESULTS_FILE,
    TOKENIZER_FILE,
    MetricsLog,
    save_run_config,
    write_json,
)
from extmem.train.session import build_model, load_run_data, resolve_device, with_vocab
from extmem.train.sparse_optim import clip_grad_norm


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C once the current state has been checkpointed."""

    def __init__(self, run_dir: Path, step: int) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint saved. Continue with: "
                         f"extmem train --resume --out {run_dir}")
        self.run_dir, self.step = run_dir, step


@dataclass
class TrainOptions:
    resume: bool = False
    quiet: bool = False   # no progress bar or tables (e.g. tests)


def _group_table(rows: list[dict]) -> Table:
    table = Table(title="parameter groups")
    for column in ("group", "patterns", "optimizer", "tensors", "params", "lr", "weight_decay"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["group"], row["patterns"], row.get("optimizer", "adamw"),
                      str(row["tensors"]), f"{row['params']:,}",
                      f"{row['lr']:g}", f"{row['weight_decay']:g}")
    return table


def _flat(prefix: str, value: object, out: dict) -> dict:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float)):
        out[prefix] = value
    return out


def train(cfg: RunConfig, run_dir: Path, options: TrainOptions | None = None) -> dict:
    """Train (or resume) the run in `run_dir`; returns the results dict (also results.json)."""
    options = options or TrainOptions()
    tc = cfg.train
    ctx = init_distributed(resolve_device(tc.device))  # one process unless under torchrun
    device = rank_device(resolve_device(tc.device), ctx)
    console = Console(stderr=True, quiet=options.quiet or not ctx.is_main)
    check_distributed_config(cfg, ctx)

    checkpoint = latest_checkpoint(run_dir) if options.resume else None
    if not ctx.is_main:
        ctx.barrier()  # rank 0 builds (and caches) the tokenizer first
    data = load_run_data(cfg, run_dir if options.resume else None)
    if ctx.is_main:
        ctx.barrier()
    cfg = with_vocab(cfg, data.lm.vocab_size)
    model = build_model(cfg, device)
    accounting = {"params": parameter_counts(model),  # the whole model, before sharding
                  "flops_per_token": flops_per_token(model, cfg.data.seq_len)}
    start, state = 0, None
    if checkpoint is not None:
        state = load_model_state(checkpoint, model)  # full weights, any layout
        start = int(state["step"])
    sharded = shard_tables(model, tc.table_sharding, ctx) if ctx.enabled else {}
    optimizer, groups = build_optimizer(model, tc)
    if checkpoint is not None:
        load_optimizer_state(checkpoint, state, optimizer, localizer(sharded) if sharded else None)
        restore_rng_state(checkpoint, ctx.rank)
        console.print(f"resuming {run_dir} from {checkpoint.name}")
    if tc.compile:
        from extmem.train.compile import compile_model
        forward_model = compile_model(model)  # dense parts compiled, memories eager
    else:
        forward_model = model
    if ctx.enabled:
        forward_model = data_parallel(forward_model, model, sharded, device)

    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_run_config(run_dir, cfg)
        if not (run_dir / TOKENIZER_FILE).exists():
            data.tokenizer.save(str(run_dir / TOKENIZER_FILE))
        write_json(run_dir / "accounting.json", accounting)
    ctx.barrier()
    console.print(_group_table(groups))
    console.print(f"params {accounting['params']}  flops/token {accounting['flops_per_token']}")
    if ctx.enabled:
        console.print(f"{ctx.world_size} processes: batch {tc.batch_size} split "
                      f"{tc.batch_size // ctx.world_size} per rank; tables sharded by "
                      f"{tc.table_sharding} ({len(sharded)} tables)")

    from torch.utils.tensorboard import SummaryWriter  # slow import: only when training
    writer = (SummaryWriter(str(run_dir / "tb"), purge_step=start + 1) if ctx.is_main
              else NullWriter())
    log = MetricsLog(run_dir, resume_step=start if options.resume else None) if ctx.is_main else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.bf16)
    tokens_per_step = tc.batch_size * cfg.data.seq_len
    rows = slice(ctx.rank * tc.batch_size // ctx.world_size,
                 (ctx.rank + 1) * tc.batch_size // ctx.world_size)  # this rank's batch rows

    def checkpoint_now(at: int) -> None:
        extra = {"tokens": at * tokens_per_step}
        if ctx.enabled:
            save_distributed_checkpoint(run_dir, at, model, optimizer, sharded, ctx, extra,
                                        keep=tc.keep_checkpoints)
        else:
            save_checkpoint(run_dir, at, model, optimizer, extra, keep=tc.keep_checkpoints)

    last_eval: dict = {}
    step = start
    model.train()
    bar = tqdm(total=tc.steps, initial=start, desc="train", unit="step", file=sys.stderr,
               disable=options.quiet or not ctx.is_main, dynamic_ncols=True, mininterval=0.5)
    window_loss, window_aux, window_steps, window_start = 0.0, 0.0, 0, time.perf_counter()
    started = time.perf_counter()
    try:
        while step < tc.steps:
            factor = lr_factor(step, tc)
            set_lr(optimizer, factor)
            model.set_memory_step(step)
            data_step = step + tc.data_offset  # augmented runs continue their source's data
            inputs, targets = data.lm.train_batch(data_step, tc.batch_size, tc.seed)
            inputs, targets = inputs[rows].to(device), targets[rows].to(device)  # (B/W, T)
            with autocast:
                loss, _ = batch_loss(forward_model, inputs, targets, data.lm, tc.seed,
                                     data_step, tc.mask_prob)
                aux = model.aux_loss()  # router balance / z-loss, already weighted
            (loss if aux is None else loss + aux).backward()
            grad_norm = (clip_grad_norm(model.parameters(), tc.grad_clip,  # sparse-aware
                                        sharded={id(t.weight) for t in sharded.values()})
                         if tc.grad_clip else None)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window_loss += ctx.mean(float(loss.detach()))
            window_aux += 0.0 if aux is None else ctx.mean(float(aux.detach()))
            window_steps += 1
            bar.update(1)
            if step % tc.log_every == 0 or step == tc.steps:
                elapsed = time.perf_counter() - window_start
                record = {"step": step, "split": "train", "loss": window_loss / window_steps,
                          "lr": tc.lr * factor,
                          "tokens_per_s": window_steps * tokens_per_step / max(elapsed, 1e-9),
                          "tokens": step * tokens_per_step}
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
                if window_aux:
                    record["aux_loss"] = window_aux / window_steps
                if log is not None:
                    log.write(record)
                for key, value in _flat("train", record, {}).items():
                    if not key.endswith(("/step", "/tokens")):
                        writer.add_scalar(key, value, step)
                bar.set_postfix(loss=f"{record['loss']:.3f}",
                                tok_s=f"{record['tokens_per_s']:.0f}")
                window_loss, window_aux, window_steps, window_start = 0.0, 0.0, 0, time.perf_counter()
            if (tc.eval_every and step % tc.eval_every == 0) or step == tc.steps:
                last_eval = evaluate(model, data.lm, data.corpus.probes, tc.eval_batch_size,
                                     tc.eval_tokens, tc.mask_prob, tc.usage_window)
                if log is not None:
                    log.write({"step": step, "split": "val", **last_eval})
                for key, value in _flat("val", last_eval, {}).items():
                    writer.add_scalar(key, value, step)
                for name, memory in model.memory_modules():  # staleness of read slots, in steps
                    last = memory.usage.last_step
                    ages = (memory.usage.step - last[last >= 0]).cpu()  # (n_read,)
                    if ages.numel():
                        writer.add_histogram(f"val/memory_usage/{name}/train_staleness", ages, step)
            if (tc.checkpoint_every and step % tc.checkpoint_every == 0) or step == tc.steps:
                checkpoint_now(step)
    except KeyboardInterrupt:
        bar.close()
        if step > start:
            checkpoint_now(step)
        writer.close()
        raise TrainingInterrupted(run_dir, step) from None
    bar.close()
    writer.close()
    if not last_eval:  # resumed a finished run: nothing trained, evaluate what is there
        last_eval = evaluate(model, data.lm, data.corpus.probes, tc.eval_batch_size,
                             tc.eval_tokens, tc.mask_prob, tc.usage_window)
    results = {"run_dir": str(run_dir), "steps": step, "tokens": step * tokens_per_step,
               "train_seconds_this_session": time.perf_counter() - started,
               **last_eval, **accounting}
    if ctx.enabled:
        results["world_size"] = ctx.world_size
        results["replica_max_abs_diff"] = replica_divergence(model, sharded)
        del forward_model  # release DDP's reducer (its threads) before the group is destroyed
        gc.collect()
    if ctx.is_main:
        write_json(run_dir / RESULTS_FILE, results)
    ctx.barrier()
    return results


