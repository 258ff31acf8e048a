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
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
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
from extmem.run.checkpoint.placement import fsdp_param, shard_like_param, table_slice

if TYPE_CHECKING:
    from extmem.distributed.tables import ShardedValueTable


def load_model_weights(model: nn.Module, path: Path,
                       sharded: dict[str, ShardedValueTable] | None = None) -> None:
    """Load a model.safetensors into `model`, with errors that name the mismatching tensor.
    The `sharded` tables read only this rank's rows (or columns) of the file."""
    sharded = sharded or {}
    try:
        with safe_open(str(path), framework="pt") as file:
            _check_names(path, model, set(file.keys()))
            saved = {}
            for name in unique_state_dict(model):  # model order: the first mismatch tells
                part = file.get_slice(name)
                shape = tuple(part.get_shape())
                table = sharded.get(name)
                expected = table.global_shape if table is not None \
                    else tuple(model.state_dict()[name].shape)
                if shape != expected:
                    raise CheckpointError(
                        f"checkpoint {path.parent} does not match the config: {name} has shape "
                        f"{shape} in the checkpoint but {expected} in the model built from the "
                        "config")
                if table is not None:  # in place: no second shard-sized copy
                    with torch.no_grad():
                        table.weight.copy_(part[table_slice(table, shape)])
                else:
                    saved[name] = file.get_tensor(name)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    model.load_state_dict(saved, strict=False)


def _check_names(path: Path, model: nn.Module, saved: set[str]) -> None:
    missing = sorted(set(unique_state_dict(model)) - saved)
    unexpected = sorted(saved - set(model.state_dict()))
    if missing or unexpected:
        detail = (f"missing {missing[:3]}" if missing else "") + \
                 (f" unexpected {unexpected[:3]}" if unexpected else "")
        raise CheckpointError(f"checkpoint {path.parent} does not match the config:{' ' + detail.strip()}; "
                              "was it written with a different model config?")


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


def load_local_optimizer(path: Path, params: dict[str, torch.Tensor] | None = None,
                         sharded: dict[str, ShardedValueTable] | None = None,
                         ) -> dict[str, torch.Tensor]:
    """Every optimizer tensor of a one-process checkpoint ("name::key" -> tensor); those of
    `sharded` tables read as this rank's slice, those of FSDP parameters (in `params`) cut to
    the parameter's shard."""
    params, sharded = params or {}, sharded or {}
    file_path = path / "optimizer.safetensors"
    out = {}
    try:
        with safe_open(str(file_path), framework="pt") as file:
            for key in file.keys():
                name = key.partition("::")[0]
                part = file.get_slice(key)
                index = table_slice(sharded[name], part.get_shape()) if name in sharded else None
                if index is not None:
                    out[key] = part[index]
                elif fsdp_param(params.get(name), part.get_shape()):
                    out[key] = shard_like_param(file.get_tensor(key), params[name])
                else:
                    out[key] = file.get_tensor(key)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path}: {file_path.name} is not readable optimizer "
                              f"state ({exc})") from None
    return out


def load_rng_file(file: Path) -> dict[str, torch.Tensor]:
    return _load(file, "RNG state")
