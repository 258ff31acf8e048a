"""Stops that are the run's, not the code's: non-finite losses or weights, out of memory. Each
ends in one line saying what to change and how to go on; a run stopped before its first
checkpoint is removed (what this session wrote), since it could not be resumed."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from extmem.errors import TrainingError
from extmem.memory.table import all_finite
from extmem.run.checkpoint import latest_checkpoint
from extmem.train.trainer import StepResult, Trainer


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
        f"{restart_advice(t)}")


def restart_advice(t: Trainer) -> str:
    """How to go on after a stop: resume from the newest checkpoint, or (none yet: the caller
    removes what this session wrote, see `discard_unresumable`) train again."""
    newest = latest_checkpoint(t.run_dir)
    if newest is None:
        return ("then train again with the same --out (there was no checkpoint yet, so "
                "nothing was kept)")
    return (f"then resume from {newest.name} (unchanged): extmem train --resume --out "
            f"{t.run_dir} --set train.lr=...")


def nonfinite_weights(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if not all_finite(p)]


def is_out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: torch.OutOfMemoryError (CUDA and other accelerators), or the CPU
    allocator's RuntimeError. Nothing else (other RuntimeErrors are bugs, not user errors)."""
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(exc, oom) or "DefaultCPUAllocator: can't allocate memory" in str(exc)


def remove_written(run_dir: Path, existing: frozenset[str] | None) -> None:
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
    if not discard_unresumable(t):
        kept = (f"{t.run_dir} was removed" if t.existing is None
                else f"what it wrote into {t.run_dir} was removed")
    tc = t.cfg.train
    return TrainingError(f"out of memory at step {step} ({reason}); {kept}. Lower "
                         f"train.batch_size (now {tc.batch_size}) and raise "
                         f"train.grad_accum_steps (now {tc.grad_accum_steps}) to keep their "
                         "product (a resume must), lower data.seq_len or the model / memory "
                         "size, or use a device with more memory")


def discard_unresumable(t: Trainer) -> bool:
    """A run stopped before its first checkpoint cannot be resumed: remove what this session
    wrote, so the same --out trains anew (the messages say so: `restart_advice`). Returns
    whether the run can be resumed."""
    if latest_checkpoint(t.run_dir) is not None:
        return True
    if t.ctx.is_main:
        remove_written(t.run_dir, t.existing)
    return False
