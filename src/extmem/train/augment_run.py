"""`extmem augment`: a new run directory holding a trained dense model with memories added.

Kim & Jung 2020 ("Large Product Key Memory for Pretrained Language Models") initialise the memory
model from a dense one: train dense, insert the memory with a zero-initialised output path,
continue training. The new run directory holds
- config.toml: the source's config with the memories appended and `train.data_offset`
  advanced past the batches the source trained on (so the continued run sees new data, as a
  scratch run of the same total length would);
- tokenizer.json: the source's tokenizer (ids must not change);
- checkpoints/step-0/: the dense weights + the new memories, an empty optimizer state;
- augment.json: provenance and the step-0 check (validation loss of both models).

`extmem train --resume --out DIR` then continues with a fresh AdamW and a fresh warmup +
cosine schedule over `train.steps`: the dense run's Adam moments do not exist for the new
parameters, and its learning rate has decayed to its minimum, which would leave a new memory
almost untrained. Steps of the continued run therefore count from 0.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from extmem.config import apply_overrides, from_dict, read_toml, to_dict
from extmem.errors import CheckpointError, ConfigError
from extmem.memory.config import PLACEMENTS, MemoryConfig
from extmem.model.augment import add_memories, default_memory, replaced_layers, transplant
from extmem.run.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    read_state,
    save_checkpoint,
    sha256_file,
    unique_state_dict,
)
from extmem.run.config import RunConfig
from extmem.run.evaluate import validation_loss
from extmem.run.provenance import record_session
from extmem.run.run_dir import (
    CONFIG_FILE,
    TOKENIZER_FILE,
    load_run_config,
    save_run_config,
    write_json,
)
from extmem.run.session import build_model, load_run_data, resolve_device, with_vocab
from extmem.train.optim import build_optimizer

AUGMENT_FILE = "augment.json"


def parse_layers(text: str) -> list[int]:
    """'2,4' -> [2, 4]."""
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--layers {text!r}: expected comma-separated layer indices, "
                          "e.g. --layers 2,4") from None
    if not layers:
        raise ConfigError(f"--layers {text!r}: no layer index given, e.g. --layers 2")
    return layers


def resolve_source(path: Path) -> tuple[Path, Path]:
    """RUN_DIR (newest checkpoint) or RUN_DIR/checkpoints/step-N -> (run_dir, checkpoint)."""
    if (path / "state.json").is_file():
        run_dir = path.parent.parent
        if not (run_dir / CONFIG_FILE).is_file():
            raise CheckpointError(f"{path}: a checkpoint outside a run directory "
                                  f"({run_dir / CONFIG_FILE} is missing)")
        return run_dir, path
    if not (path / CONFIG_FILE).is_file():
        raise CheckpointError(f"{path}: neither a run directory ({CONFIG_FILE}) nor a "
                              "checkpoint directory (state.json)")
    checkpoint = latest_checkpoint(path)
    if checkpoint is None:
        raise CheckpointError(f"{path}: no complete checkpoint found; train it first")
    return path, checkpoint


def read_memory_file(path: Path) -> list[dict[str, Any]]:
    """Memory tables of a TOML file: a run config's [[model.memories]], a list [[memories]],
    or the fields of one memory at the top level."""
    data = read_toml(path)
    if "model" in data:
        memories = data["model"].get("memories", []) if isinstance(data["model"], dict) else []
        if not memories:
            raise ConfigError(f"--memory {path}: has a [model] table but no [[model.memories]]")
        return [dict(m) for m in memories]
    if "memories" in data:
        return [dict(m) for m in data["memories"]]
    return [data]


def build_memories(model_cfg: Any, memory_path: Path | None, layers: list[int] | None,
                   placement: str | None) -> list[MemoryConfig]:
    """The memories to add: from the TOML file (its layers/placement unless given) or the
    scaled default. A missing `zero_init_output` defaults to true (step 0 = dense model)."""
    if placement is not None and placement not in PLACEMENTS:
        raise ConfigError(f"--placement: {placement!r} is not allowed; choose one of "
                          f"{', '.join(repr(p) for p in PLACEMENTS)}")
    if memory_path is None:
        if layers is None:
            raise ConfigError("augment: give --layers (e.g. --layers 2), or a --memory TOML "
                              "that lists its layers")
        return [default_memory(model_cfg, layers, placement or "parallel_ffn")]
    out = []
    for i, raw in enumerate(read_memory_file(memory_path)):
        if layers is not None:
            raw["layers"] = layers
        elif "layers" not in raw:
            raise ConfigError(f"--memory {memory_path}: memory {i} has no layers; set "
                              "layers = [...] in the file or pass --layers")
        if placement is not None:
            raw["placement"] = placement
        raw.setdefault("zero_init_output", True)
        out.append(from_dict(MemoryConfig, raw, "memory"))
    return out


def _new_config(cfg: RunConfig, memories: list[MemoryConfig], source_step: int,
                overrides: list[str]) -> RunConfig:
    model = add_memories(cfg.model, memories) if memories else cfg.model  # none: a restart
    train = dataclasses.replace(cfg.train, data_offset=cfg.train.data_offset + source_step)
    data = to_dict(RunConfig(model=model, data=cfg.data, train=train))
    return from_dict(RunConfig, apply_overrides(data, overrides))


@torch.no_grad()
def _check(dense: torch.nn.Module, augmented: torch.nn.Module, cfg: RunConfig, data: Any,
           device: torch.device) -> dict[str, float]:
    """Validation loss of both models (same batches, same masks) and the largest logit gap."""
    tc = cfg.train
    dense.eval()
    augmented.eval()
    dense_loss, _ = validation_loss(dense, data.lm, tc.eval_batch_size, tc.eval_tokens,
                                    tc.mask_prob, device)
    new_loss, _ = validation_loss(augmented, data.lm, tc.eval_batch_size, tc.eval_tokens,
                                  tc.mask_prob, device)
    inputs, _ = next(iter(data.lm.val_batches(tc.eval_batch_size, tc.eval_tokens)))
    inputs = inputs.to(device)  # (B, T)
    gap = float((dense(inputs) - augmented(inputs)).abs().max())
    return {"val_loss_dense": dense_loss, "val_loss_augmented": new_loss,
            "val_loss_delta": new_loss - dense_loss, "max_abs_logit_diff": gap}


def _refuse_existing(out: Path) -> None:
    """Never write into an existing run (or any non-empty directory)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = ("is a file" if not out.is_dir() else
                "already holds a run" if (out / CONFIG_FILE).exists() else "is not empty")
        raise ConfigError(f"--out {out}: {what}; choose a new directory")


def _prepare_out(out: Path) -> Path:
    _refuse_existing(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-augment-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def publish(tmp: Path, out: Path) -> None:
    """Move the finished run `tmp` to `out` (empty or absent, checked by _prepare_out)."""
    try:
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except OSError:  # another process wrote `out` meanwhile
        raise ConfigError(f"--out {out}: was written by another process meanwhile; choose "
                          "a new directory") from None


def augment_run(source: Path, out: Path, memory_path: Path | None = None,
                layers: list[int] | None = None, placement: str | None = None,
                overrides: list[str] | None = None,
                memories: list[MemoryConfig] | None = None, force: bool = False) -> dict[str, Any]:
    """Write the augmented run directory `out`; returns what augment.json holds.
    `memories` (already validated) take the place of `memory_path` / `layers` / `placement`;
    `force` skips the check that the new tables fit in memory (`extmem.model.resources`)."""
    run_dir, checkpoint = resolve_source(source)
    source_cfg = load_run_config(run_dir)
    source_step = int(read_state(checkpoint)["step"])
    if memories is None:
        memories = build_memories(source_cfg.model, memory_path, layers, placement)
    cfg = _new_config(source_cfg, memories, source_step, overrides or [])
    _refuse_existing(out)
    if not (run_dir / TOKENIZER_FILE).is_file():
        raise CheckpointError(f"{run_dir}: {TOKENIZER_FILE} is missing; the augmented run "
                              "must keep the source's token ids")

    data = load_run_data(source_cfg, run_dir)
    source_cfg, cfg = with_vocab(source_cfg, data.lm.vocab_size), with_vocab(cfg, data.lm.vocab_size)
    device = resolve_device(cfg.train.device)
    dense = build_model(source_cfg, device, force=force, training=False)
    load_checkpoint(checkpoint, dense)
    # new memories initialised from train.seed (and the run's tokenizer, for Engram)
    model = build_model(cfg, device, force=force, tokenizer=data.tokenizer)
    dense_state = unique_state_dict(dense)  # as loaded: one-process or torchrun (DCP) checkpoint
    moved = transplant(dense_state, model, replaced_layers(cfg.model) - replaced_layers(source_cfg.model))
    check = _check(dense, model, cfg, data, device)
    model.train()

    report = {"run_dir": str(out), "source_run": str(run_dir), "source_checkpoint": str(checkpoint),
              "source_step": source_step, "data_offset": cfg.train.data_offset,
              "memories": [to_dict(m) for m in cfg.model.memories[len(source_cfg.model.memories):]],
              **check,
              "new_tensors": moved["new"], "dropped_tensors": moved["dropped"],
              "new_params": sum(p.numel() for n, p in model.named_parameters() if n in moved["new"]),
              "optimizer": "fresh AdamW and warmup + cosine schedule; steps count from 0"}
    tmp = _prepare_out(out)
    try:
        save_run_config(tmp, cfg)
        shutil.copyfile(run_dir / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        optimizer, _ = build_optimizer(model, cfg.train)  # no state yet: a fresh optimizer
        save_checkpoint(tmp, 0, model, optimizer, {
            "tokens": 0, "augmented_from": str(checkpoint), "data_vocab_size": cfg.data.vocab_size,
            "tokenizer_sha256": sha256_file(tmp / TOKENIZER_FILE)})  # what a resume must match
        write_json(tmp / AUGMENT_FILE, report)
        record_session(tmp, "augment", source=str(checkpoint))
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report
