"""Setting up a training session (`set_up`): the run directory's lock, data, model (resumed
if asked), table shards, optimizer, the run files and the metric writers. Nothing in the run
directory is written before the checkpoint has loaded, so a mismatch changes nothing."""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from extmem.console import print_table
from extmem.distributed.context import DistContext, init_distributed, rank_device
from extmem.distributed.parallel import (
    NullWriter,
    check_distributed_config,
    data_parallel,
    fully_shard_core,
)
from extmem.distributed.tables import ShardedValueTable, sharded_tables
from extmem.errors import ExtmemError
from extmem.model import Transformer, flops_per_token, parameter_counts
from extmem.pretrained import base_dir, copy_base_files
from extmem.run.checkpoint import (
    latest_checkpoint,
    load_model_state,
    load_optimizer_state,
    restore_rng_state,
    sha256_file,
)
from extmem.run.config import RunConfig
from extmem.run.lock import RunLock
from extmem.run.provenance import record_session
from extmem.run.run_dir import (
    TOKENIZER_FILE,
    MetricsLog,
    save_run_config,
    write_json,
)
from extmem.run.session import RunData, build_model, load_run_data, resolve_device, with_vocab
from extmem.train.failures import remove_written
from extmem.train.optim import build_optimizer
from extmem.train.resume import resume_point
from extmem.train.trainer import Trainer, TrainOptions
from extmem.train.writers import MetricWriters, hyperparameters, open_writers, require_tracker


def group_table(rows: list[dict]) -> Table:
    table = Table(title="parameter groups")
    for column in ("group", "patterns", "optimizer", "tensors", "params", "lr", "weight_decay"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["group"], row["patterns"], row.get("optimizer", "adamw"),
                      str(row["tensors"]), f"{row['params']:,}",
                      f"{row['lr']:g}", f"{row['weight_decay']:g}")
    return table


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
    """The module the loop calls forward on: compiled dense parts and/or DDP around `model`
    (with FSDP2, `model` itself, already sharded in place by `fully_shard_core`)."""
    forward_model: torch.nn.Module = model
    if cfg.train.compile:
        from extmem.train.compile import compile_model
        forward_model = compile_model(model)  # dense parts compiled, memories eager
    if ctx.enabled and cfg.train.data_parallel == "ddp":  # FSDP2 wrapped the model in place
        forward_model = data_parallel(forward_model, model, sharded, device)
    return forward_model


def _write_run_files(run_dir: Path, cfg: RunConfig, data: RunData, accounting: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    save_run_config(run_dir, cfg)
    if cfg.model.pretrained:  # the checkpoint's config and tokenizer files, not its weights
        copy_base_files(base_dir(cfg.model.pretrained, run_dir), run_dir)
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
                remove_written(run_dir, existing)
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

    checkpoint, state = resume_point(cfg, run_dir, options, console)
    data = _load_data(cfg, run_dir, ctx, options.resume)
    cfg = with_vocab(cfg, data.lm.vocab_size)
    # tables sharded as they are built: no rank ever holds a whole one
    model = build_model(cfg, device, force=options.force, tokenizer=data.tokenizer,
                        run_dir=run_dir, ctx=ctx)
    sharded = sharded_tables(model)
    accounting = {"params": parameter_counts(model),  # the whole model (tables counted whole)
                  "flops_per_token": flops_per_token(model, cfg.data.seq_len, tc.mask_prob)}
    if checkpoint is not None:  # dense weights whole, each table's shard only
        load_model_state(checkpoint, model, state, sharded)
    if ctx.enabled and tc.data_parallel == "fsdp":
        fully_shard_core(model, sharded)  # before the optimizer: it holds the DTensors
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
    print_table(console, group_table(groups))
    console.print(f"params {accounting['params']}  flops/token {accounting['flops_per_token']}",
                  soft_wrap=True)  # one line in a log, however long
    if ctx.enabled:
        console.print(f"{ctx.world_size} processes: batch {tc.batch_size} split "
                      f"{tc.batch_size // ctx.world_size} per rank; tables sharded by "
                      f"{tc.table_sharding} ({len(sharded)} tables); dense core by "
                      f"{tc.data_parallel}")

    start = int(state["step"]) if state is not None else 0
    writer = _open_writers(cfg, run_dir, ctx, start, model, accounting, options.quiet, existing)
    log = MetricsLog(run_dir, resume_step=start if options.resume else None) if ctx.is_main else None
    # this rank's share of the step's rows (all its micro-batches)
    rows = slice(ctx.rank * tc.rows_per_step // ctx.world_size,
                 (ctx.rank + 1) * tc.rows_per_step // ctx.world_size)
    return Trainer(cfg=cfg, run_dir=run_dir, ctx=ctx, device=device, data=data, model=model,
                   forward_model=forward_model, optimizer=optimizer, sharded=sharded,
                   accounting=accounting, start=start, console=console, writer=writer, log=log,
                   autocast=torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.bf16),
                   rows=rows, extra=extra, existing=existing)
