"""The training loop: AdamW + warmup/cosine, clipping, periodic eval and atomic checkpoints.

A run killed at any moment and resumed with `--resume` ends with the same weights and losses
as an uninterrupted run: batches and masks depend only on (seed, step), and checkpoints hold
model, optimizer, RNG state and the step.

The loop reads as its named steps: `set_up` (setup.py: lock, data, model, resume, sharding,
optimizer, run files, writers), `train_step` (one optimizer step of
`train.grad_accum_steps` micro-batches), `check_finite`
(failures.py), `log_window` (train metrics every `log_every` steps), `evaluate_now`
(validation and usage), `checkpoint_now`, `finish` (results.json). `train` strings them
together; trainer.py holds the session's state, resume.py what a resume must match.
"""
from __future__ import annotations

import gc
import resource
import signal
import sys
import time
from contextlib import AbstractContextManager, ExitStack, nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from extmem.cpu_load import cpu_seconds, other_cpus_busy
from extmem.distributed.parallel import replica_divergence
from extmem.errors import TrainingError
from extmem.run.checkpoint import (
    save_checkpoint,
)
from extmem.run.config import RunConfig
from extmem.run.evaluate import evaluate
from extmem.run.objective import is_causal, label_count, prepare_batch, token_loss
from extmem.run.run_dir import (
    RESULTS_FILE,
    write_json,
)
from extmem.train.failures import (
    check_finite,
    discard_unresumable,
    is_out_of_memory,
    nonfinite_weights,
    out_of_memory,
    restart_advice,
)
from extmem.train.optim import lr_factor, set_lr
from extmem.train.setup import set_up
from extmem.train.sparse_optim import clip_grad_norm
from extmem.train.stop import StopRequest
from extmem.train.trainer import StepBatches, StepResult, Trainer, TrainingInterrupted, TrainOptions, Window


def _flat(prefix: str, value: object, out: dict) -> dict:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float)):
        out[prefix] = value
    return out


def _micro_batches(t: Trainer, data_step: int) -> StepBatches:
    """This rank's micro-batches of the step: the global batch of batch_size *
    grad_accum_steps rows is drawn (and, for a masked LM, masked) in one piece, then this
    rank's rows taken, so every grad_accum_steps and world size sees the same rows and masks."""
    tc = t.cfg.train
    inputs, targets = t.data.lm.train_batch(data_step, tc.rows_per_step, tc.seed)  # (A*B, T)
    inputs, labels = prepare_batch(is_causal(t.forward_model), inputs, targets, t.data.lm,
                                   tc.seed, data_step, tc.mask_prob)
    predicted = label_count(labels)
    inputs, labels = inputs[t.rows].to(t.device), labels[t.rows].to(t.device)  # (A*B/W, T)
    size = inputs.shape[0] // tc.grad_accum_steps
    return StepBatches(list(zip(inputs.split(size), labels.split(size), strict=True)), predicted)


def _step_batches(t: Trainer, data_step: int) -> StepBatches:
    """The step's micro-batches. With a memory that warms a mapped table (memory.prefetch),
    the next step's are drawn now too (they depend on (seed, step) only) and their rows'
    pages requested while this step computes (`MemoryHost.warm_tables`); kept for that step."""
    ahead = t.batches_ahead
    batches = ahead[1] if ahead is not None and ahead[0] == data_step else None
    t.batches_ahead = None
    if batches is None:
        batches = _micro_batches(t, data_step)
    if t.warm_ahead is None:  # asked once per session: the memories do not change
        t.warm_ahead = t.model.warms_tables()
    if t.warm_ahead:
        upcoming = _micro_batches(t, data_step + 1)
        for inputs, _ in upcoming.micro:
            t.model.warm_tables(inputs)
        t.batches_ahead = (data_step + 1, upcoming)
    return batches


def _sync_unless(t: Trainer, last: bool) -> AbstractContextManager:
    """DDP's no_sync on every micro-batch but the last (gradients sync once per step)."""
    no_sync = getattr(t.forward_model, "no_sync", None)
    return nullcontext() if last or no_sync is None else no_sync()


def train_step(t: Trainer, step: int) -> StepResult:
    """One optimizer step at `step` (learning rate, micro-batches' forward and backward,
    clip, update). Each micro-batch's mean loss is weighted by its share of the step's
    predicted tokens over every rank (times the world size, as DDP averages the ranks'
    gradients), so the gradient is that of the whole global batch's mean token loss, also for
    a masked LM whose ranks predict different numbers of tokens; auxiliary losses are
    averaged over the micro-batches.

    A non-finite loss or gradient norm skips the update (the gradients are dropped)."""
    tc = t.cfg.train
    t.in_step = True
    set_lr(t.optimizer, lr_factor(step, tc))
    t.model.set_memory_step(step)
    data_step = step + tc.data_offset  # augmented runs continue their source's data
    batches = _step_batches(t, data_step)
    micro, world = batches.micro, t.ctx.world_size
    loss_sum: torch.Tensor | float = 0.0
    aux_sum: torch.Tensor | None = None
    for i, (inputs, labels) in enumerate(micro):
        with _sync_unless(t, i == len(micro) - 1):
            with t.autocast:
                loss, count = token_loss(t.forward_model, inputs, labels)
                aux = t.model.aux_loss()  # router balance / z-loss, already weighted
            if len(micro) > 1 or world > 1:
                loss = loss * (count * world / max(batches.predicted, 1))
                aux = None if aux is None else aux / len(micro)
            (loss if aux is None else loss + aux).backward()
        loss_sum = loss_sum + loss.detach()
        if aux is not None:
            aux_sum = aux.detach() if aux_sum is None else aux_sum + aux.detach()
    grad_norm = None
    if tc.grad_clip:  # sparse-aware; sharded tables' norms are summed over ranks
        grad_norm = float(clip_grad_norm(t.model.parameters(), tc.grad_clip,
                                         sharded={id(s.weight) for s in t.sharded.values()}))
    result = StepResult(loss=t.ctx.mean(float(loss_sum)),
                        aux=0.0 if aux_sum is None else t.ctx.mean(float(aux_sum)),
                        grad_norm=grad_norm)
    if result.finite:
        t.optimizer.step()
    t.optimizer.zero_grad(set_to_none=True)
    t.in_step = False
    return result


def log_window(t: Trainer, window: Window, step: int, last: StepResult) -> dict:
    """Write the window's train metrics (metrics.jsonl, TensorBoard); returns the record."""
    tc = t.cfg.train
    elapsed = time.perf_counter() - window.started
    record = {"step": step, "split": "train", "loss": window.loss / window.steps,
              "lr": tc.lr * lr_factor(step - 1, tc),
              "tokens_per_s": window.steps * t.tokens_per_step / max(elapsed, 1e-9),
              "tokens": step * t.tokens_per_step}
    others = other_cpus_busy(window.cpu_start, cpu_seconds())
    if others is not None:  # the tokens/s are no timing when other processes shared the CPU
        record["other_cpus_busy"] = others
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
    # tokens trained so far, a dense-init run's source included (its data_offset steps)
    tokens = ((t.step if step is None else step) + tc.data_offset) * t.tokens_per_step
    results = evaluate(t.model, t.data.lm, t.data.corpus.probes, tc.eval_batch_size,
                       tc.eval_tokens, tc.mask_prob, tc.usage_window,
                       train_probes=t.data.corpus.train_probes, tokens_trained=tokens,
                       accounting=t.accounting)
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
    bad = nonfinite_weights(t.model)
    if bad:
        raise TrainingError(f"step {step}: {len(bad)} weight tensors are not finite (e.g. "
                            f"{bad[0]}); not saved. Lower train.lr (now {t.cfg.train.lr:g}), "
                            f"{restart_advice(t)}")
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
        # each rank's peak resident memory (ru_maxrss, KiB on Linux): with sharded tables
        # about 1/W of the tables each (docs/distributed.md, "Memory per rank")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        results["peak_rss_bytes_per_rank"] = t.ctx.gather(peak)
        t.forward_model = t.model  # release DDP's reducer (its threads) before the group goes
        gc.collect()
    if t.ctx.is_main:
        write_json(t.run_dir / RESULTS_FILE, results)
    t.ctx.barrier()
    return results


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
            t.writer.close(128 + signal.SIGINT)
            resumable = saved or discard_unresumable(t)
            raise TrainingInterrupted(run_dir, t.step, signal.SIGINT, saved, resumable) from None
        except RuntimeError as exc:  # torch.OutOfMemoryError is one too
            if not is_out_of_memory(exc):
                raise
            bar.close()
            t.writer.close(2)
            raise out_of_memory(t, exc) from None
        except TrainingError as exc:  # non-finite loss / weights
            bar.close()
            t.writer.close(2)
            discard_unresumable(t)
            raise exc from None
        bar.close()
        if stop.signum is not None and t.step < tc.steps:
            t.writer.close(128 + stop.signum)
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
