"""Local back end: one process writes model, optimizer and RNG state as safetensors.

Files are written into `.tmp-step-N-PID/`, hashed into state.json and renamed into place
(`format.publish_checkpoint`), so a run killed at any moment leaves a complete checkpoint or
none; loading never unpickles.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from extmem.errors import CheckpointError
from extmem.run.checkpoint.format import (
    FORMAT_VERSION,
    optimizer_kinds,
    optimizer_tensors,
    publish_checkpoint,
    rng_tensors,
    sha256_file,
    unique_state_dict,
)


def load_model_weights(model: nn.Module, path: Path) -> None:
    """Load a model.safetensors into `model`, with errors that name the mismatching tensor."""
    try:
        saved = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    expected = model.state_dict()
    required = unique_state_dict(model)
    missing = sorted(set(required) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        detail = (f"missing {missing[:3]}" if missing else "") + \
                 (f" unexpected {unexpected[:3]}" if unexpected else "")
        raise CheckpointError(f"checkpoint {path.parent} does not match the config:{' ' + detail.strip()}; "
                              "was it written with a different model config?")
    for name in required:  # model order: the first mismatching parameter is the telling one
        tensor = saved[name]
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"checkpoint {path.parent} does not match the config: {name} has shape "
                f"{tuple(tensor.shape)} in the checkpoint but {tuple(expected[name].shape)} "
                "in the model built from the config")
    model.load_state_dict(saved, strict=False)


def save_local_checkpoint(run_dir: Path, step: int, model: nn.Module,
                          optimizer: torch.optim.Optimizer, extra: dict | None = None,
                          keep: int = 0) -> Path:
    """Write RUN/checkpoints/step-N atomically; keep only the newest `keep` (0: all).

    A failed write (a full disk, a quota) removes the half-written directory and ends in a
    CheckpointError; the checkpoints already there are untouched."""
    root = run_dir / "checkpoints"
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(unique_state_dict(model), str(tmp / "model.safetensors"))
        save_file(optimizer_tensors(optimizer), str(tmp / "optimizer.safetensors"))
        save_file(rng_tensors(), str(tmp / "rng.safetensors"))
        files = {name: sha256_file(tmp / name)
                 for name in ("model.safetensors", "optimizer.safetensors", "rng.safetensors")}
        state = {"format_version": FORMAT_VERSION, "step": step, "time": time.time(),
                 "files": files, "optimizers": optimizer_kinds(optimizer), **(extra or {})}
        return publish_checkpoint(run_dir, tmp, final, state, keep)
    except (OSError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CheckpointError(f"cannot write checkpoint step-{step} in {root}: {reason}; the "
                              "checkpoints already there are intact. Free space, then resume: "
                              f"extmem train --resume --out {run_dir}") from None


def _load(file: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {file.parent}: {file.name} is not readable {what} "
                              f"({exc})") from None


def load_local_optimizer(path: Path) -> dict[str, torch.Tensor]:
    """Every optimizer tensor of a one-process checkpoint ("name::key" -> tensor)."""
    return _load(path / "optimizer.safetensors", "optimizer state")


def load_rng_file(file: Path) -> dict[str, torch.Tensor]:
    return _load(file, "RNG state")
