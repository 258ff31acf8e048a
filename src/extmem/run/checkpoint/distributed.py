"""Distributed checkpoints with `torch.distributed.checkpoint` (DCP).

A torchrun run writes RUN/checkpoints/step-N/ with
- dcp/: the model and optimizer state. Sharded tables (and their optimizer state) are
  DTensors (`Shard(0)` for row shards, `Shard(1)` for column shards), so each rank writes only
  its shard and DCP records the global shape; replicated tensors are written once.
- rng-rank{r}.safetensors: each rank's RNG state (restored when resuming on as many ranks);
- state.json: format version, step, SHA-256 of every file, world size, table sharding.
The directory is assembled under a temporary name and renamed by rank 0 after every rank has
written, so a crash leaves a complete checkpoint or none.

Loading reshards without materialising a table: a sharded table (and its optimizer state)
is loaded as a DTensor over this rank's shard, so DCP reads only the rows (or columns) the
rank holds, whatever layout wrote them; FSDP2 parameters' optimizer state loads the same way
into their own placements (`placement.py`). In one process (`extmem eval` / `export`)
everything is read as full tensors. So a checkpoint written on N ranks loads on 1 or M, and
a one-process checkpoint starts an N-rank run.
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
from extmem.run.checkpoint.placement import empty_like_param, fsdp_param, table_slice

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


def load_dcp_model(path: Path, model: nn.Module,
                   sharded: dict[str, ShardedValueTable] | None = None) -> None:
    """Model weights from a DCP checkpoint; the `sharded` tables read only their shard, in
    place, everything else as full tensors."""
    sharded = sharded or {}
    weights = unique_state_dict(model)  # full tensors, filled in place
    targets = {name: _as_dtensor(sharded[name].weight.detach(), sharded[name])
               if name in sharded else tensor for name, tensor in weights.items()}
    _load(path, {"model": targets})
    model.load_state_dict({name: tensor for name, tensor in weights.items()
                           if name not in sharded}, strict=False)


def _optimizer_target(key: str, meta: TensorStorageMetadata, params: dict[str, torch.Tensor],
                      sharded: dict[str, ShardedValueTable]) -> torch.Tensor:
    """Where "name::field" of the checkpoint loads: a DTensor over a table shard, a DTensor in
    an FSDP parameter's placements, or a full tensor."""
    name = key.partition("::")[0]
    table = sharded.get(name)
    index = table_slice(table, meta.size) if table is not None else None
    if index is not None:
        local = torch.empty(meta.size, dtype=meta.properties.dtype, device="meta")[index]
        return _as_dtensor(torch.empty(local.shape, dtype=local.dtype,
                                       device=table.weight.device), table)
    if fsdp_param(params.get(name), meta.size):
        return empty_like_param(params[name], meta.properties.dtype)
    return torch.empty(meta.size, dtype=meta.properties.dtype)


def load_dcp_optimizer(path: Path, params: dict[str, torch.Tensor] | None = None,
                       sharded: dict[str, ShardedValueTable] | None = None,
                       ) -> dict[str, torch.Tensor]:
    """The optimizer tensors of a DCP checkpoint ("name::key" -> tensor): those of `sharded`
    tables as this rank's shard, those of FSDP parameters (in `params`) as DTensors like the
    parameter, the rest full."""
    params, sharded = params or {}, sharded or {}
    metadata = FileSystemReader(str(path / DCP_DIR)).read_metadata().state_dict_metadata
    prefix = "optim."
    tensors = {key[len(prefix):]: _optimizer_target(key[len(prefix):], meta, params, sharded)
               for key, meta in metadata.items()
               if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)}
    if tensors:
        _load(path, {"optim": tensors})
    return {key: tensor.to_local() if isinstance(tensor, DTensor) and
            key.partition("::")[0] in sharded else tensor for key, tensor in tensors.items()}
