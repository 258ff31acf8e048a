"""The training loop: AdamW + warmup/cosine, clipping, periodic eval and atomic checkpoints.

A run killed at any moment and resumed with `--resume` ends with the same weights and losses
as an uninterrupted run: batches and masks depend only on (seed, step), and checkpoints hold
model, optimizer, RNG state and the step.

The loop reads as its named steps: `set_up` (data, model, resume, sharding, optimizer, run
directory, writers), `train_step` (one optimizer step), `log_window` (train metrics every
`log_every` steps), `evaluate_now` (validation and usage), `checkpoint_now`, `finish`
(results.json). `train` strings them together.
"""

from __future__ import annotations

import gc
import math
import shutil
import signal
import sys
import time
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from extmem.config import read_toml
from extmem.console import print_table
from extmem.distributed.context import DistContext, init_distributed, rank_device
from extmem.distributed.parallel import (
    NullWriter,
    check_distributed_config,
    data_parallel,
    replica_divergence,
)
from extmem.distributed.tables import ShardedValueTable, shard_tables
from extmem.errors import CheckpointError, ConfigError, ExtmemError, TrainingError
from extmem.model import Transformer, flops_per_token, parameter_counts
from extmem.run.checkpoint import (
    latest_checkpoint,
    load_model_state,
    load_optimizer_state,
    read_state,
    restore_rng_state,
    save_checkpoint,
    sha256_file,
)
from extmem.run.config import RunConfig
from extmem.run.evaluate import evaluate
from extmem.run.lock import RunLock
from extmem.run.objective import batch_loss
from extmem.run.provenance import record_session
from extmem.run.run_dir import (
    CONFIG_FILE,
    RESULTS_FILE,
    TOKENIZER_FILE,
    MetricsLog,
    save_run_config,
    write_json,
)
from extmem.run.session import RunData, build_model, load_run_data, resolve_device, with_vocab
from extmem.train.optim import build_optimizer, lr_factor, set_lr
from extmem.train.sparse_optim import clip_grad_norm
from extmem.train.stop import StopRequest
from extmem.train.writers import MetricWriters, hyperparameters, open_writers, require_tracker


class TrainingInterrupted(Exception):
    """Raised after SIGINT / SIGTERM once the finished step has been checkpointed (or, for an
    interrupt that had to act inside a step, with the newest checkpoint left as it was)."""

    def __init__(self, run_dir: Path, step: int, signum: int, saved: bool,
                 resumable: bool = True) -> None:
        name = signal.Signals(signum).name
        what = (f"checkpoint step-{step} saved" if saved else
                "interrupted inside a step: nothing saved after the newest checkpoint")
        then = (f"Continue with: extmem train --resume --out {run_dir}" if resumable else
                "There was no checkpoint yet, so nothing was kept: train again with the same --out")
        super().__init__(f"{name} at step {step}; {what}. {then}")
        self.run_dir, self.step, self.signum, self.saved = run_dir, step, signum, saved

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


@dataclass
class TrainOptions:
    # True: continue from the newest complete checkpoint (none is an error); "auto": continue
    # if there is one, else start at step 0 (what `extmem compare` does with a killed run).
    resume: bool | Literal["auto"] = False
    quiet: bool = False   # no progress bar or tables (e.g. tests)
    # The process group; the CLI builds it (it needs it to pick the run directory on rank 0).
    # None: `train` joins torchrun's group itself, or runs as one process.
    ctx: DistContext | None = None
    # skip the check that the memory tables fit in memory (`extmem.model.resources`)
    force: bool = False


@dataclass
class Trainer:
    """Everything one training session holds between its steps."""

    cfg: RunConfig
    run_dir: Path
    ctx: DistContext
    device: torch.device
    data: RunData
    model: Transformer
    forward_model: torch.nn.Module          # model, or its compiled / DDP wrapper
    optimizer: torch.optim.Optimizer
    sharded: dict[str, ShardedValueTable]   # parameter name -> this rank's table shard
    accounting: dict
    start: int                              # the step this session starts from
    console: Console
    writer: MetricWriters | NullWriter      # TensorBoard + tracker (rank 0), or NullWriter
    log: MetricsLog | None                  # rank 0 only
    autocast: AbstractContextManager
    rows: slice                             # this rank's rows of each global batch
    # what every checkpoint's state.json records besides the step (tokenizer_sha256, ...)
    extra: dict = field(default_factory=dict)
    # RUN's entries before this session (None: this process created RUN); rank 0 only
    existing: frozenset[str] | None = None
    step: int = 0                           # steps finished so far (the run's, not the session's)
    in_step: bool = False                   # between the forward and the optimizer update
    skipped: int = 0                        # non-finite steps skipped this session

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.train.batch_size * self.cfg.data.seq_len


@dataclass
class StepResult:
    loss: float
    aux: float                    # router balance / z-loss (0 when the model has none)
    grad_norm: float | None       # before clipping; None when clipping is off

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and (self.grad_norm is None or math.isfinite(self.grad_norm))


@dataclass
class Window:
    """Train metrics accumulated since the last log line."""

    loss: float = 0.0
    aux: float = 0.0
    steps: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, result: StepResult) -> None:
        if not result.finite:  # a skipped step: no update, nothing to average
            return
        self.loss += result.loss
        self.aux += result.aux
        self.steps += 1


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


def _load_data(cfg: RunConfig, run_dir: Path, ctx: DistContext, resume: bool) -> RunData:
    """Tokenized data for the run; rank 0 builds (and caches) the tokenizer first."""
    if not ctx.is_main:
        ctx.barrier()
    data = load_run_data(cfg, run_dir if resume else None)
    if ctx.is_main:
        ctx.barrier()
    return data


def _wrap_for_forward(model: Transformer, cfg: RunConfig, ctx: DistContext,
                      sharded: dict[str, ShardedValueTable], device: torch.device) -> torch.nn.Module:
    """The module the loop calls forward on: compiled dense parts and/or DDP around `model`."""
    forward_model: torch.nn.Module = model
    if cfg.train.compile:
        from extmem.train.compile import compile_model
        forward_model = compile_model(model)  # dense parts compiled, memories eager
    if ctx.enabled:
        forward_model = data_parallel(forward_model, model, sharded, device)
    return forward_model


def _write_run_files(run_dir: Path, cfg: RunConfig, data: RunData, accounting: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    save_run_config(run_dir, cfg)
    if not (run_dir / TOKENIZER_FILE).exists():
        data.tokenizer.save(str(run_dir / TOKENIZER_FILE))
    write_json(run_dir / "accounting.json", accounting)


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Half-written checkpoint directories of a killed process (kill -9, power loss)."""
    root = run_dir / "checkpoints"
    if root.is_dir():
        for path in [*root.glob(".tmp-step-*"), *root.glob(".old-step-*")]:
            shutil.rmtree(path, ignore_errors=True)


def _lock_run(run_dir: Path, ctx: DistContext, held: ExitStack) -> frozenset[str] | None:
    """Rank 0 takes RUN/.lock (run/lock.py: one writer per run directory) before anything in
    RUN is touched; under torchrun the ranks share RUN, and all stop if rank 0 cannot take it.
    Returns RUN's entries before this session (None: this process created RUN)."""
    failure, existing = None, None
    if ctx.is_main:
        before = frozenset(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else None
        try:
            lock = held.enter_context(RunLock(run_dir))
        except ExtmemError as exc:
            failure = exc
        else:
            existing = None if lock.created else before
    failure = ctx.from_main(failure)
    if failure is not None:
        raise failure
    return existing


def _saved_config(run_dir: Path) -> dict:
    """RUN/config.toml as written by the last session (empty if missing or unreadable)."""
    try:
        return read_toml(run_dir / CONFIG_FILE)
    except ConfigError:
        return {}


def _check_resume(cfg: RunConfig, run_dir: Path, checkpoint: Path, state: dict,
                  console: Console) -> None:
    """What a resumed run must share with its checkpoint: the tokenizer (token ids) and
    data.vocab_size. train.steps may change (extending a run is how it is done): one line."""
    tokenizer = run_dir / TOKENIZER_FILE
    if "tokenizer_sha256" in state and (not tokenizer.is_file()
                                        or sha256_file(tokenizer) != state["tokenizer_sha256"]):
        what = "is missing" if not tokenizer.is_file() else "was changed or replaced"
        raise CheckpointError(f"{tokenizer} {what}: {checkpoint.name} was trained with another "
                              "tokenizer (its SHA-256 is in state.json), so the token ids would "
                              "not match; restore the run's tokenizer.json, or train a new run")
    saved = _saved_config(run_dir)
    vocab = state.get("data_vocab_size", saved.get("data", {}).get("vocab_size"))
    if vocab is not None and vocab != cfg.data.vocab_size:
        raise ConfigError(f"data.vocab_size: {cfg.data.vocab_size} differs from the {vocab} "
                          f"{run_dir} was trained with (tokenizer and embeddings depend on it); "
                          f"resume with data.vocab_size={vocab}, or train a new run")
    steps = saved.get("train", {}).get("steps")
    if isinstance(steps, int) and steps != cfg.train.steps:
        console.print(f"train.steps: {steps} -> {cfg.train.steps}")


def _resume_from(cfg: RunConfig, run_dir: Path, options: TrainOptions,
                 console: Console) -> tuple[Path | None, dict | None]:
    """The checkpoint to resume from and its verified state.json (None, None: start anew)."""
    checkpoint = latest_checkpoint(run_dir) if options.resume else None
    if checkpoint is None:
        if options.resume is True:
            raise CheckpointError(f"--resume: {run_dir} has no complete checkpoint to continue "
                                  "from; train it anew (without --resume, or another --out)")
        return None, None
    state = read_state(checkpoint)
    _check_resume(cfg, run_dir, checkpoint, state, console)
    return checkpoint, state


def _open_writers(cfg: RunConfig, run_dir: Path, ctx: DistContext, start: int, model: Transformer,
                  accounting: dict, quiet: bool,
                  existing: frozenset[str] | None) -> MetricWriters | NullWriter:
    """TensorBoard and the tracker on rank 0, with the config and hyper-parameters. A tracker
    that cannot start stops every rank with one line; without a checkpoint yet, what this
    session wrote is removed (the same command can run again)."""
    writer: MetricWriters | NullWriter = NullWriter()
    failure = None
    if ctx.is_main:
        slots = sum(memory.num_slots for _, memory in model.memory_modules())
        try:
            writer = open_writers(cfg, run_dir, start, hyperparameters(cfg, slots, accounting),
                                  quiet)
        except ExtmemError as exc:
            failure = exc
            if latest_checkpoint(run_dir) is None:
                _remove_written(run_dir, existing)
    failure = ctx.from_main(failure)
    if failure is not None:
        raise failure
    return writer


def set_up(cfg: RunConfig, run_dir: Path, options: TrainOptions, held: ExitStack) -> Trainer:
    """Data, model (resumed if asked), table shards, optimizer, run directory and writers.
    The run directory's lock is entered on `held` (released when the caller closes it); the
    run files are written only after the checkpoint has loaded (a mismatch changes nothing)."""
    tc = cfg.train
    require_tracker(tc)  # a tracker that is not installed: one line, before RUN is touched
    ctx = options.ctx or init_distributed(resolve_device(tc.device))  # one process unless torchrun
    existing = _lock_run(run_dir, ctx, held)
    device = rank_device(resolve_device(tc.device), ctx)
    console = Console(stderr=True, quiet=options.quiet or not ctx.is_main)
    check_distributed_config(cfg, ctx)

    checkpoint, state = _resume_from(cfg, run_dir, options, console)
    data = _load_data(cfg, run_dir, ctx, options.resume)
    cfg = with_vocab(cfg, data.lm.vocab_size)
    model = build_model(cfg, device, force=options.force)
    accounting = {"params": parameter_counts(model),  # the whole model, before sharding
                  "flops_per_token": flops_per_token(model, cfg.data.seq_len)}
    if checkpoint is not None:  # full weights
        load_model_state(checkpoint, model, state)
    sharded = shard_tables(model, tc.table_sharding, ctx) if ctx.enabled else {}
    optimizer, groups = build_optimizer(model, tc)
    if checkpoint is not None:
        load_optimizer_state(checkpoint, state, optimizer, sharded)
        restore_rng_state(checkpoint, ctx.rank)
        console.print(f"resuming {run_dir} from {checkpoint.name}")
    forward_model = _wrap_for_forward(model, cfg, ctx, sharded, device)

    extra = {}
    if ctx.is_main:
        _remove_stale_temporaries(run_dir)
        _write_run_files(run_dir, cfg, data, accounting)
        record_session(run_dir, "train", start_step=int(state["step"]) if state else 0,
                       world_size=ctx.world_size, device=str(device))
        extra = {"tokenizer_sha256": sha256_file(run_dir / TOKENIZER_FILE),
                 "data_vocab_size": cfg.data.vocab_size}
    ctx.barrier()
    print_table(console, _group_table(groups))
    console.print(f"params {accounting['params']}  flops/token {accounting['flops_per_token']}",
                  soft_wrap=True)  # one line in a log, however long
    if ctx.enabled:
        console.print(f"{ctx.world_size} processes: batch {tc.batch_size} split "
                      f"{tc.batch_size // ctx.world_size} per rank; tables sharded by "
                      f"{tc.table_sharding} ({len(sharded)} tables)")

    start = int(state["step"]) if state is not None else 0
    writer = _open_writers(cfg, run_dir, ctx, start, model, accounting, options.quiet, existing)
    log = MetricsLog(run_dir, resume_step=start if options.resume else None) if ctx.is_main else None
    rows = slice(ctx.rank * tc.batch_size // ctx.world_size,
                 (ctx.rank + 1) * tc.batch_size // ctx.world_size)
    return Trainer(cfg=cfg, run_dir=run_dir, ctx=ctx, device=device, data=data, model=model,
                   forward_model=forward_model, optimizer=optimizer, sharded=sharded,
                   accounting=accounting, start=start, console=console, writer=writer, log=log,
                   autocast=torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.bf16),
                   rows=rows, extra=extra, existing=existing)


def train_step(t: Trainer, step: int) -> StepResult:
    """One optimizer step at `step` (learning rate, batch, forward, backward, clip, update).

    A non-finite loss or gradient norm skips the update (the gradients are dropped)."""
    tc = t.cfg.train
    t.in_step = True
    set_lr(t.optimizer, lr_factor(step, tc))
    t.model.set_memory_step(step)
    data_step = step + tc.data_offset  # augmented runs continue their source's data
    inputs, targets = t.data.lm.train_batch(data_step, tc.batch_size, tc.seed)
    inputs, targets = inputs[t.rows].to(t.device), targets[t.rows].to(t.device)  # (B/W, T)
    with t.autocast:
        loss, _ = batch_loss(t.forward_model, inputs, targets, t.data.lm, tc.seed,
                             data_step, tc.mask_prob)
        aux = t.model.aux_loss()  # router balance / z-loss, already weighted
    (loss if aux is None else loss + aux).backward()
    grad_norm = None
    if tc.grad_clip:  # sparse-aware; sharded tables' norms are summed over ranks
        grad_norm = float(clip_grad_norm(t.model.parameters(), tc.grad_clip,
                                         sharded={id(s.weight) for s in t.sharded.values()}))
    result = StepResult(loss=t.ctx.mean(float(loss.detach())),
                        aux=0.0 if aux is None else t.ctx.mean(float(aux.detach())),
                        grad_norm=grad_norm)
    if result.finite:
        t.optimizer.step()
    t.optimizer.zero_grad(set_to_none=True)
    t.in_step = False
    return result


def check_finite(t: Trainer, step: int, result: StepResult) -> None:
    """Count a skipped non-finite step; past train.max_nonfinite_steps, stop with one line."""
    if result.finite:
        return
    t.skipped += 1
    tc = t.cfg.train
    if t.skipped <= tc.max_nonfinite_steps:
        t.console.print(f"step {step}: loss {result.loss} / grad norm {result.grad_norm} is not "
                        f"finite; update skipped ({t.skipped} of {tc.max_nonfinite_steps} allowed)")
        return
    raise TrainingError(
        f"step {step}: the loss is {result.loss} and the gradient norm {result.grad_norm}, not "
        f"finite; training stopped. Lower train.lr (now {tc.lr:g}) or set train.grad_clip, "
        f"{_restart_advice(t)}")


def _restart_advice(t: Trainer) -> str:
    """How to go on after a stop: resume from the newest checkpoint, or (none yet: the caller
    removes what this session wrote, see `nothing_to_resume`) train again."""
    newest = latest_checkpoint(t.run_dir)
    if newest is None:
        return ("then train again with the same --out (there was no checkpoint yet, so "
                "nothing was kept)")
    return (f"then resume from {newest.name} (unchanged): extmem train --resume --out "
            f"{t.run_dir} --set train.lr=...")


def _nonfinite_weights(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]


def log_window(t: Trainer, window: Window, step: int, last: StepResult) -> dict:
    """Write the window's train metrics (metrics.jsonl, TensorBoard); returns the record."""
    tc = t.cfg.train
    elapsed = time.perf_counter() - window.started
    record = {"step": step, "split": "train", "loss": window.loss / window.steps,
              "lr": tc.lr * lr_factor(step - 1, tc),
              "tokens_per_s": window.steps * t.tokens_per_step / max(elapsed, 1e-9),
              "tokens": step * t.tokens_per_step}
    if last.grad_norm is not None:
        record["grad_norm"] = last.grad_norm
    if window.aux:
        record["aux_loss"] = window.aux / window.steps
    if t.log is not None:
        t.log.write(record)
    for key, value in _flat("train", record, {}).items():
        if not key.endswith(("/step", "/tokens")):
            t.writer.add_scalar(key, value, step)
    return record


def evaluate_now(t: Trainer, step: int | None = None) -> dict:
    """Validation metrics and memory usage; logged when `step` is given."""
    tc = t.cfg.train
    results = evaluate(t.model, t.data.lm, t.data.corpus.probes, tc.eval_batch_size,
                       tc.eval_tokens, tc.mask_prob, tc.usage_window)
    if step is None:
        return results
    if t.log is not None:
        t.log.write({"step": step, "split": "val", **results})
    for key, value in _flat("val", results, {}).items():
        t.writer.add_scalar(key, value, step)
    for name, memory in t.model.memory_modules():  # staleness of read slots, in steps
        ages = memory.usage.read_ages().cpu()  # (n_read,)
        if ages.numel():
            t.writer.add_histogram(f"val/memory_usage/{name}/train_staleness", ages, step)
    return results


def checkpoint_now(t: Trainer, step: int) -> None:
    """Collective under torchrun: every rank writes its part of RUN/checkpoints/step-N.
    Non-finite weights are never written (the newest finite checkpoint stays the newest)."""
    bad = _nonfinite_weights(t.model)
    if bad:
        raise TrainingError(f"step {step}: {len(bad)} weight tensors are not finite (e.g. "
                            f"{bad[0]}); not saved. Lower train.lr (now {t.cfg.train.lr:g}), "
                            f"{_restart_advice(t)}")
    save_checkpoint(t.run_dir, step, t.model, t.optimizer,
                    {"tokens": step * t.tokens_per_step, **t.extra},
                    keep=t.cfg.train.keep_checkpoints, ctx=t.ctx, sharded=t.sharded)


def finish(t: Trainer, step: int, last_eval: dict, seconds: float) -> dict:
    """results.json (rank 0) with the final evaluation and the accounting; returns it."""
    results = {"run_dir": str(t.run_dir), "steps": step, "tokens": step * t.tokens_per_step,
               "train_seconds_this_session": seconds, **last_eval, **t.accounting}
    if t.ctx.enabled:
        results["world_size"] = t.ctx.world_size
        results["replica_max_abs_diff"] = replica_divergence(t.model, t.sharded)
        t.forward_model = t.model  # release DDP's reducer (its threads) before the group goes
        gc.collect()
    if t.ctx.is_main:
        write_json(t.run_dir / RESULTS_FILE, results)
    t.ctx.barrier()
    return results


def is_out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: torch.OutOfMemoryError (CUDA and other accelerators), or the CPU
    allocator's RuntimeError. Nothing else (other RuntimeErrors are bugs, not user errors)."""
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(exc, oom) or "DefaultCPUAllocator: can't allocate memory" in str(exc)


def _remove_written(run_dir: Path, existing: frozenset[str] | None) -> None:
    """Remove what this session wrote into RUN (all of RUN if it created it)."""
    if existing is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for path in run_dir.iterdir():
        if path.name not in existing:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def out_of_memory(t: Trainer, exc: BaseException) -> TrainingError:
    """The error for running out of memory at the step after `t.step`. A run with no
    checkpoint yet cannot be resumed, so what this session wrote is removed (a later train
    with the same --out starts clean); a run with checkpoints keeps them all."""
    step = t.step + 1
    lines = str(exc).strip().splitlines()
    reason = lines[0] if lines else type(exc).__name__
    kept = "the checkpoints already there are intact"
    if t.ctx.is_main and latest_checkpoint(t.run_dir) is None:
        _remove_written(t.run_dir, t.existing)
        kept = (f"{t.run_dir} was removed" if t.existing is None
                else f"what it wrote into {t.run_dir} was removed")
    return TrainingError(f"out of memory at step {step} ({reason}); {kept}. Lower "
                         f"train.batch_size (now {t.cfg.train.batch_size}), data.seq_len or the "
                         "model / memory size, or use a device with more memory")


def nothing_to_resume(t: Trainer, exc: TrainingError) -> TrainingError:
    """A run stopped before its first checkpoint cannot be resumed: remove what this session
    wrote, so the same --out trains anew (the message already says so: `_restart_advice`)."""
    if not t.ctx.is_main or latest_checkpoint(t.run_dir) is not None:
        return exc
    _remove_written(t.run_dir, t.existing)
    return exc


def _due(every: int, step: int, last: int) -> bool:
    return bool(every and step % every == 0) or step == last


def train(cfg: RunConfig, run_dir: Path, options: TrainOptions | None = None) -> dict:
    """Train (or resume) the run in `run_dir`; returns the results dict (also results.json).

    SIGINT / SIGTERM at any moment (set-up included) finish the current step, checkpoint it
    and raise TrainingInterrupted; a signal while the results are written is ignored. The run
    directory is locked (one writer) from the start of set-up until this returns or raises."""
    options = options or TrainOptions()
    with StopRequest() as stop, ExitStack() as held:
        t = set_up(cfg, run_dir, options, held)
        tc = t.cfg.train
        t.step = t.start
        t.model.train()
        bar = tqdm(total=tc.steps, initial=t.start, desc="train", unit="step", file=sys.stderr,
                   disable=options.quiet or not t.ctx.is_main, dynamic_ncols=True,
                   mininterval=0.5)
        started = time.perf_counter()
        try:
            last_eval = _run_steps(t, bar, stop)
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside the handler's reach
            bar.close()
            saved = not t.in_step and t.step > t.start
            if saved:
                checkpoint_now(t, t.step)
            t.writer.close()
            resumable = saved or latest_checkpoint(run_dir) is not None
            if not resumable:
                nothing_to_resume(t, TrainingError("interrupted"))  # removes what it wrote
            raise TrainingInterrupted(run_dir, t.step, signal.SIGINT, saved, resumable) from None
        except RuntimeError as exc:  # torch.OutOfMemoryError is one too
            if not is_out_of_memory(exc):
                raise
            bar.close()
            t.writer.close()
            raise out_of_memory(t, exc) from None
        except TrainingError as exc:  # non-finite loss / weights
            bar.close()
            t.writer.close()
            raise nothing_to_resume(t, exc) from None
        bar.close()
        if stop.signum is not None and t.step < tc.steps:
            t.writer.close()
            raise TrainingInterrupted(run_dir, t.step, stop.signum, saved=True)
        if not last_eval:  # resumed a finished run: nothing trained, evaluate what is there
            last_eval = evaluate_now(t)
        t.writer.end_session(_flat("val", last_eval, {}), t.step)  # HParams metric, W&B summary
        t.writer.close()
        return finish(t, t.step, last_eval, time.perf_counter() - started)


def _run_steps(t: Trainer, bar: tqdm, stop: StopRequest) -> dict:
    """Steps until train.steps or a stop request (then a checkpoint of the finished step);
    returns the last evaluation."""
    tc = t.cfg.train
    last_eval: dict = {}
    window = Window()
    while t.step < tc.steps:
        result = train_step(t, t.step)
        t.step = step = t.step + 1
        check_finite(t, step, result)
        window.add(result)
        bar.update(1)
        if _due(tc.log_every, step, tc.steps) and window.steps:
            record = log_window(t, window, step, result)
            bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            window = Window()
        if _due(tc.eval_every, step, tc.steps):
            last_eval = evaluate_now(t, step)
        stopping = stop.requested(t.ctx) is not None
        if stopping or _due(tc.checkpoint_every, step, tc.steps):
            checkpoint_now(t, step)
        if stopping:
            break
    return last_eval
