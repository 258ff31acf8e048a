"""Checkpoints of a run: one save / load entry point over two back ends.

- `local.py`: one process, safetensors files (model, optimizer, RNG).
- `distributed.py`: torchrun, `torch.distributed.checkpoint` (DCP) with sharded tables as
  DTensors, each rank writing its shard.
Both write RUN/checkpoints/step-N/ with a state.json (format version, step, SHA-256 of every
file; `format.py`), assembled under a temporary name and renamed, and both load into any
layout: a checkpoint written on N ranks loads on 1 or M. Callers use only this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from extmem.errors import CheckpointError
from extmem.memory.table import all_finite
from extmem.run.checkpoint.format import (
    DCP_DIR,
    FORMAT_VERSION,
    READABLE_VERSIONS,
    LoadedCheckpoint,
    check_optimizer_kinds,
    check_state,
    is_distributed_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_optimizer_tensors,
    params_by_name,
    read_state,
    set_rng_tensors,
    sha256_file,
    unique_state_dict,
)
from extmem.run.checkpoint.local import (
    load_local_optimizer,
    load_model_weights,
    load_rng_file,
    save_local_checkpoint,
)

if TYPE_CHECKING:
    from extmem.distributed.context import DistContext
    from extmem.distributed.tables import ShardedValueTable

__all__ = [
    "DCP_DIR", "FORMAT_VERSION", "READABLE_VERSIONS", "LoadedCheckpoint", "check_state",
    "is_distributed_checkpoint",
    "latest_checkpoint", "list_checkpoints", "load_checkpoint", "load_model_state",
    "load_model_weights", "load_optimizer_state", "read_state", "restore_rng_state",
    "save_checkpoint", "sha256_file", "unique_state_dict",
]


def save_checkpoint(run_dir: Path, step: int, model: nn.Module,
                    optimizer: torch.optim.Optimizer, extra: dict | None = None,
                    keep: int = 0, ctx: DistContext | None = None,
                    sharded: dict[str, ShardedValueTable] | None = None) -> Path:
    """Write RUN/checkpoints/step-N atomically and keep only the newest `keep` (0: all).

    Under torchrun (`ctx.enabled`) every rank must call it (DCP, each rank its shards of the
    `sharded` tables); otherwise one process writes safetensors."""
    if ctx is not None and ctx.enabled:
        from extmem.run.checkpoint.distributed import save_distributed_checkpoint
        return save_distributed_checkpoint(run_dir, step, model, optimizer, sharded or {}, ctx,
                                           extra, keep=keep)
    return save_local_checkpoint(run_dir, step, model, optimizer, extra, keep=keep)


def load_model_state(path: Path, model: nn.Module, state: dict | None = None,
                     sharded: dict[str, ShardedValueTable] | None = None) -> dict:
    """Verify the checkpoint and load its model weights, whichever way it was written (one
    process: safetensors; torchrun: DCP); the `sharded` tables of this rank read only their
    shard (never the whole table). Returns state (`state`: what `read_state(path)` already
    returned, to skip hashing the files again). Weights that are not finite (NaN / inf) are
    an error: nothing can be evaluated from them."""
    state = read_state(path) if state is None else state
    if is_distributed_checkpoint(path):
        from extmem.run.checkpoint.distributed import load_dcp_model
        load_dcp_model(path, model, sharded)
    else:
        load_model_weights(model, path / "model.safetensors", sharded)
    bad = [name for name, p in model.named_parameters() if not all_finite(p)]
    if bad:
        raise CheckpointError(f"checkpoint {path}: the weights are not finite ({len(bad)} "
                              f"tensors hold NaN or inf, e.g. {bad[0]}); use an earlier "
                              "checkpoint (--checkpoint step-N)")
    return state


def load_optimizer_state(path: Path, state: dict, optimizer: torch.optim.Optimizer,
                         sharded: dict[str, ShardedValueTable] | None = None) -> None:
    """Restore the optimizer; tensors of `sharded` tables are read as this rank's shard and
    those of FSDP2 parameters (DTensors) in the parameter's placements."""
    check_optimizer_kinds(path, state, optimizer)
    params = params_by_name(optimizer)
    if is_distributed_checkpoint(path):
        from extmem.run.checkpoint.distributed import load_dcp_optimizer
        tensors = load_dcp_optimizer(path, params, sharded)
    else:
        tensors = load_local_optimizer(path, params, sharded)
    load_optimizer_tensors(optimizer, tensors)


def restore_rng_state(path: Path, rank: int = 0) -> bool:
    """Restore this rank's RNG if the checkpoint has it (same world size); returns whether."""
    file = path / (f"rng-rank{rank}.safetensors" if is_distributed_checkpoint(path)
                   else "rng.safetensors")
    if not file.is_file():
        return False
    set_rng_tensors(load_rng_file(file), file)
    return True


def load_checkpoint(path: Path, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    restore_rng: bool = False) -> LoadedCheckpoint:
    """One process: model (and optimizer, RNG) from a checkpoint of any layout."""
    state = load_model_state(path, model)
    if optimizer is not None:
        load_optimizer_state(path, state, optimizer)
    if restore_rng:
        restore_rng_state(path)
    return LoadedCheckpoint(path=path, step=int(state["step"]), state=state)
