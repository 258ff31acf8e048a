"""Distributed checkpoints with `torch.distributed.checkpoint` (DCP).

A torchrun run writes RUN/checkpoints/step-N/ with
- dcp/: the model and optimizer state. Sharded tables (and their optimizer state) are
  DTensors (`Shard(0)` for row shards, `Shard(1)` for column shards), so each rank writes only
  its shard and DCP records the global shape; replicated tensors are written once.
- rng-rank{r}.safetensors: each rank's RNG state (restored when resuming on as many ranks);
- state.json: format version, step, SHA-256 of every file, world size, table sharding.
The directory is assembled under a temporary name and renamed by rank 0 after every rank has
written, so a crash leaves a complete checkpoint or none.

Loading reshards: the model weights (and optimizer state) are read as full tensors, in one
process (for `extmem eval` / `export`) or on every rank before the tables are cut to the
rank's shard, so a checkpoint written on N ranks loads on 1 or M, and a one-process
checkpoint starts an N-rank run.
"""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Shard

from extmem.distributed.context import DistContext
from extmem.distributed.tables import ShardedValueTable
from extmem.errors import CheckpointError
from extmem.run.checkpoint.format import (
    DCP_DIR,
    FORMAT_VERSION,
    optimizer_kinds,
    optimizer_tensors,
    publish_checkpoint,
    rng_tensors,
    sha256_file,
    unique_state_dict,
)

_MESHES: dict[str, DeviceMesh] = {}


def _mesh(device: torch.device) -> DeviceMesh:
    if device.type not in _MESHES:
        _MESHES[device.type] = init_device_mesh(device.type, (dist.get_world_size(),))
    return _MESHES[device.type]


def _as_dtensor(local: torch.Tensor, table: ShardedValueTable) -> DTensor:
    """This rank's piece of a full-table-shaped (N, d_v) or per-row (N,) tensor as a DTensor."""
    if local.dim() == 2:
        shape, dim = table.global_shape, table.shard_dim
    else:
        shape, dim = table.global_shape[:1], 0
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(local, _mesh(local.device), [Shard(dim)], run_check=False,
                              shape=torch.Size(shape), stride=stride)


def _is_shard_shaped(tensor: torch.Tensor, table: ShardedValueTable) -> bool:
    local = table.weight.shape
    return tuple(tensor.shape) == tuple(local) or (
        tensor.dim() == 1 and table.shard_dim == 0 and tensor.shape[0] == local[0])


def _state(model: nn.Module, optimizer, sharded: dict[str, ShardedValueTable]) -> dict:
    full = model.state_dict()  # tensors in place (no CPU copies): DCP writes them directly
    weights = {name: full[name] for name in unique_state_dict(model)}
    for name, table in sharded.items():
        weights[name] = _as_dtensor(table.weight.detach(), table)
    optim = {}
    for key, tensor in optimizer_tensors(optimizer, cpu=False).items():
        table = sharded.get(key.partition("::")[0])
        optim[key] = (_as_dtensor(tensor, table)
                      if table is not None and _is_shard_shaped(tensor, table) else tensor)
    return {"model": weights, "optim": optim}


def save_distributed_checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer,
                                sharded: dict[str, ShardedValueTable], ctx: DistContext,
                                extra: dict | None = None, keep: int = 0) -> Path:
    """Collective: every rank calls it; returns RUN/checkpoints/step-N."""
    root = run_dir / "checkpoints"
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-dist"
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    ctx.barrier()
    dcp.save(_state(model, optimizer, sharded), checkpoint_id=str(tmp / DCP_DIR))
    save_file(rng_tensors(), str(tmp / f"rng-rank{ctx.rank}.safetensors"))
    ctx.barrier()
    if ctx.is_main:
        files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        state = {"format_version": FORMAT_VERSION, "step": step, "time": time.time(),
                 "files": files, "optimizers": optimizer_kinds(optimizer),
                 "world_size": ctx.world_size,
                 "table_sharding": next(iter(sharded.values())).layout if sharded else "replicate",
                 **(extra or {})}
        publish_checkpoint(run_dir, tmp, final, state, keep)
    ctx.barrier()
    return final


def _load(path: Path, state: dict) -> None:
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, checkpoint_id=str(path / DCP_DIR), no_dist=not dist.is_initialized())
    except Exception as exc:  # noqa: BLE001 (DCP wraps per-rank failures in its own types)
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} does not match the config: {message}; was it "
                              "written with a different model config?") from None


def load_dcp_model(path: Path, model: nn.Module) -> None:
    """Full model weights from a DCP checkpoint into an unsharded model."""
    weights = unique_state_dict(model)  # full tensors, filled in place
    _load(path, {"model": weights})
    model.load_state_dict(weights, strict=False)


def load_dcp_optimizer(path: Path) -> dict[str, torch.Tensor]:
    """Every optimizer tensor of a DCP checkpoint as a full tensor ("name::key" -> tensor)."""
    metadata = FileSystemReader(str(path / DCP_DIR)).read_metadata().state_dict_metadata
    prefix = "optim."
    tensors = {key[len(prefix):]: torch.empty(meta.size, dtype=meta.properties.dtype)
               for key, meta in metadata.items()
               if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)}
    if tensors:
        _load(path, {"optim": tensors})
    return tensors


def localizer(sharded: dict[str, ShardedValueTable]):
    """(param name, full tensor) -> this rank's part of it (unchanged if not a table's)."""
    def localize(name: str, tensor: torch.Tensor) -> torch.Tensor:
        table = sharded.get(name)
        if table is None or tensor.dim() == 0:
            return tensor
        return table.shard(tensor).clone()
    return localize
