"""`extmem finetune`: a classification head on a pretrained run, trained and evaluated on a
held-out split (downstream evaluation as in Kim & Jung 2020, "Large Product Key Memory for
Pretrained Language Models").

Modes (which parameters train; the head always does):
- `full`: every parameter of the pretrained model;
- `frozen-base`: none of them (a linear probe of the pooled features);
- `memory-only`: the memory layers (tables, keys, query and output networks); the dense core
  and embeddings stay frozen.
Each example is `EOS text`, cut to `max_len` tokens with the run's tokenizer. Results go to
RUN_DIR/finetune/<task>-<mode>[-N]/ (config.toml, metrics.jsonl, results.json, provenance.json,
TensorBoard events in tb/ and, unless `save_weights = false`, classifier.safetensors); the
directory is assembled under a temporary name and renamed into place at the end. The
pretraining checkpoints are only read.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import tomli_w
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from extmem.config import apply_overrides, from_dict, to_dict, write_toml
from extmem.errors import ConfigError
from extmem.finetune.config import MODES, FinetuneConfig
from extmem.finetune.metrics import accuracy, macro_f1, majority_baseline
from extmem.finetune.tasks import TaskData, load_task
from extmem.model.classifier import SequenceClassifier
from extmem.run.checkpoint import unique_state_dict
from extmem.run.config import TrainConfig
from extmem.run.provenance import record_session
from extmem.run.run_dir import MetricsLog, write_json
from extmem.run.session import load_trained
from extmem.train.optim import build_optimizer, lr_factor, set_lr
from extmem.train.sparse_optim import clip_grad_norm

FINETUNE_DIR = "finetune"


def parse_config(overrides: list[str]) -> FinetuneConfig:
    """`--set steps=100` (or `finetune.steps=100`) -> FinetuneConfig."""
    plain = [o.removeprefix("finetune.") for o in overrides]
    return from_dict(FinetuneConfig, apply_overrides({}, plain), "finetune")


def frames_texts(tokenizer: Any) -> bool:
    """Whether the tokenizer adds its own special tokens around a text (a pretrained BERT's
    `[CLS] text [SEP]`); extmem's byte-level BPE adds none."""
    return tokenizer.encode("a").ids != tokenizer.encode("a", add_special_tokens=False).ids


def encode(tokenizer: Any, texts: list[str], eos_id: int, max_len: int) -> list[list[int]]:
    """Token ids cut to max_len: the text as the tokenizer frames it when it does (a
    pretrained model's `[CLS] text [SEP]`, extmem.pretrained), else `EOS text`."""
    if frames_texts(tokenizer):
        return [e.ids[:max_len] for e in tokenizer.encode_batch(texts)]
    return [[eos_id, *e.ids][:max_len] for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def pad_batch(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> input_ids (B, L) right-padded and padding_mask (B, L) True at padding."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    lengths = torch.tensor([len(s) for s in sequences])
    return ids, torch.arange(length)[None, :] >= lengths[:, None]


def select_trainable(model: SequenceClassifier, mode: str) -> int:
    """Freeze what `mode` keeps fixed; returns the number of trainable parameters."""
    if mode not in MODES:
        raise ConfigError(f"--mode: {mode!r} is not allowed; choose one of {', '.join(MODES)}")
    has_memory = bool(model.body.memory_modules())
    if mode == "memory-only" and not has_memory:
        raise ConfigError("--mode memory-only: this run has no memory layers; use full or "
                          "frozen-base")
    for name, param in model.body.named_parameters():
        param.requires_grad = mode == "full" or (mode == "memory-only" and ".memories." in name)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _optimizer(model: SequenceClassifier, run_train: TrainConfig,
               cfg: FinetuneConfig) -> tuple[torch.optim.Optimizer, TrainConfig]:
    """AdamW with the run's parameter groups (their weight decay), finetuning learning rates."""
    groups = [dataclasses.replace(g, lr=(cfg.memory_values_lr or None)
                                  if g.name == "memory_values" else None)
              for g in run_train.param_groups]
    schedule = TrainConfig(steps=cfg.steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                           min_lr_ratio=0.0, weight_decay=cfg.weight_decay,
                           beta1=run_train.beta1, beta2=run_train.beta2, param_groups=groups)
    optimizer, _ = build_optimizer(model, schedule)
    return optimizer, schedule


@torch.no_grad()
def predict(model: SequenceClassifier, sequences: list[list[int]], pad_id: int,
            batch_size: int, device: torch.device) -> list[int]:
    model.eval()
    out: list[int] = []
    for start in range(0, len(sequences), batch_size):
        ids, padding = pad_batch(sequences[start:start + batch_size], pad_id)
        out.extend(model(ids.to(device), padding.to(device)).argmax(-1).tolist())
    return out


def slug(task: str) -> str:
    """A task name (or file path) as a directory-name part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_",
                  Path(task).stem if "." in task else task).strip("_") or "task"


def _out_dir(run_dir: Path, task: str, mode: str) -> Path:
    base = run_dir / FINETUNE_DIR / f"{slug(task)}-{mode}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def train_classifier(model: SequenceClassifier, data: TaskData, train_ids: list[list[int]],
                     cfg: FinetuneConfig, run_train: TrainConfig, pad_id: int,
                     device: torch.device, log: list[dict], writer: Any = None,
                     quiet: bool = True) -> None:
    """`cfg.steps` steps; train records go to `log` and, given a SummaryWriter, to
    TensorBoard (train/loss, train/lr). A progress bar on stderr unless `quiet`."""
    optimizer, schedule = _optimizer(model, run_train, cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    labels = torch.tensor(data.train_labels)
    window = 0.0
    bar = tqdm(total=cfg.steps, desc="finetune", unit="step", file=sys.stderr, disable=quiet,
               dynamic_ncols=True, mininterval=0.5)
    for step in range(cfg.steps):
        model.train()
        set_lr(optimizer, lr_factor(step, schedule))
        generator = torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) % (1 << 64))
        pick = torch.randint(0, len(train_ids), (cfg.batch_size,), generator=generator)  # (B,)
        ids, padding = pad_batch([train_ids[i] for i in pick.tolist()], pad_id)
        logits = model(ids.to(device), padding.to(device))  # (B, C)
        loss = F.cross_entropy(logits, labels[pick].to(device))
        aux = model.body.aux_loss()  # router balance losses, if any memory has one
        (loss if aux is None else loss + aux).backward()
        if cfg.grad_clip:
            clip_grad_norm(trainable, cfg.grad_clip)  # dense and row-sparse grads
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window += float(loss.detach())
        bar.update(1)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            count = (step % cfg.log_every) + 1
            record = {"step": step + 1, "split": "train", "loss": window / count,
                      "lr": cfg.lr * lr_factor(step, schedule)}
            _log_train(record, log, writer, bar)
            window = 0.0
    bar.close()


def _log_train(record: dict, log: list[dict], writer: Any, bar: tqdm) -> None:
    log.append(record)
    if writer is not None:
        writer.add_scalar("train/loss", record["loss"], record["step"])
        writer.add_scalar("train/lr", record["lr"], record["step"])
    bar.set_postfix(loss=f"{record['loss']:.3f}")


def finetune(run_dir: Path, task: str, mode: str = "full", overrides: list[str] | None = None,
             checkpoint: str | None = None, quiet: bool = False,
             out: Path | None = None) -> dict[str, Any]:
    """Finetune and evaluate; returns results (also written to the results directory: `out`,
    default RUN/finetune/<task>-<mode>[-N]). `quiet`: no progress bar."""
    cfg = parse_config(overrides or [])
    started = time.perf_counter()
    run = load_trained(run_dir, None, checkpoint)
    if cfg.max_len > run.cfg.model.max_seq_len:
        raise ConfigError(f"finetune.max_len: {cfg.max_len} exceeds the model's "
                          f"max_seq_len={run.cfg.model.max_seq_len}")
    data = load_task(task, cfg)
    lm = run.data.lm
    device = next(run.model.parameters()).device
    torch.manual_seed(cfg.seed)
    model = SequenceClassifier(run.model, len(data.classes), cfg.pooling, cfg.dropout).to(device)
    trainable = select_trainable(model, mode)
    train_ids = encode(lm.tokenizer, data.train_texts, lm.eos_id, cfg.max_len)
    eval_ids = encode(lm.tokenizer, data.eval_texts, lm.eos_id, cfg.max_len)
    out = out or _out_dir(run_dir, task, mode)
    tmp = _staging_dir(out)
    try:
        record_session(tmp, "finetune", run_dir=str(run_dir), checkpoint=run.checkpoint.name,
                       task=task, mode=mode)
        from torch.utils.tensorboard import SummaryWriter  # slow import: only when training
        log: list[dict] = []
        with SummaryWriter(str(tmp / "tb")) as writer:
            writer.add_text("config", f"```toml\n{tomli_w.dumps(to_dict(cfg))}\n```", 0)
            train_classifier(model, data, train_ids, cfg, run.cfg.train, lm.pad_id, device, log,
                             writer, quiet)
            predicted = predict(model, eval_ids, lm.pad_id, cfg.eval_batch_size, device)
            results: dict[str, Any] = {
                "run_dir": str(run_dir), "checkpoint": run.checkpoint.name, "task": task,
                "mode": mode, "pooling": cfg.pooling, "steps": cfg.steps,
                "n_train": len(train_ids), "n_eval": len(eval_ids), "n_classes": len(data.classes),
                "accuracy": accuracy(predicted, data.eval_labels),
                "macro_f1": macro_f1(predicted, data.eval_labels),
                **majority_baseline(data.train_labels, data.eval_labels),
                "trainable_params": trainable, "train_loss": log[-1]["loss"] if log else None,
                "seconds": time.perf_counter() - started, "out_dir": str(out),
                "classes": data.classes}
            writer.add_scalar("eval/accuracy", results["accuracy"], cfg.steps)
            writer.add_scalar("eval/macro_f1", results["macro_f1"], cfg.steps)
        results["majority_class"] = data.classes[results["majority_class"]]
        _write(tmp, out, cfg, results, log, model)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def _staging_dir(out: Path) -> Path:
    """An empty directory beside `out` where the results are assembled."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _write(tmp: Path, out: Path, cfg: FinetuneConfig, results: dict, log: list[dict],
           model: SequenceClassifier) -> None:
    """The rest of the results directory in `tmp`, then `tmp` renamed to `out`."""
    write_toml(tmp / "config.toml", {"task": results["task"], "mode": results["mode"],
                                     "checkpoint": results["checkpoint"],
                                     "finetune": to_dict(cfg)})
    metrics = MetricsLog(tmp)
    for record in log:
        metrics.write(record)
    metrics.write({"step": cfg.steps, "split": "eval", "accuracy": results["accuracy"],
                   "macro_f1": results["macro_f1"]})
    if cfg.save_weights:
        save_file(unique_state_dict(model), str(tmp / "classifier.safetensors"))
    write_json(tmp / "results.json", results)
    final = _publish(tmp, out)
    if final != out:  # another finetune of the same task and mode took `out` meanwhile
        results["out_dir"] = str(final)
        write_json(final / "results.json", results)


def _publish(tmp: Path, out: Path) -> Path:
    """Rename `tmp` to `out`, or to the next free `out-N` if another process got there first
    (two finetunes of one run's task and mode finishing together); returns the name used."""
    stem, n = out.name, 1
    while True:
        try:
            tmp.rename(out)
            return out
        except OSError:
            if not out.exists() or n > 1000:
                raise
            n += 1
            out = out.with_name(f"{stem}-{n}")
