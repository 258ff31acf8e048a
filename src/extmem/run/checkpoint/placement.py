"""Where a saved full-shaped tensor goes on this rank, without materialising it whole.

A table shard (`extmem.distributed.tables.ShardedValueTable`) takes a slice of a saved
(N, d_v) table or (N,) per-row tensor: its rows (or columns), read from a safetensors file with
`get_slice` or from DCP into a DTensor over the shard. An FSDP2 parameter (a DTensor,
docs/distributed.md) takes its own shard of the saved tensor, in the parameter's placements.
Everything else is loaded whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.distributed.tensor import DTensor, distribute_tensor

if TYPE_CHECKING:
    from extmem.distributed.tables import ShardedValueTable


def table_slice(table: ShardedValueTable, shape) -> tuple[slice, ...] | None:
    """This rank's index into a saved tensor of `shape` that is table-shaped (N, d_v) or
    per-row (N,) with row shards; None if it is neither (a scalar, a wrong shape)."""
    shape = tuple(shape)
    own = slice(table.start, table.stop)
    if shape == table.global_shape:
        return (own,) if table.shard_dim == 0 else (slice(None), own)
    if len(shape) == 1 and table.shard_dim == 0 and shape[0] == table.global_shape[0]:
        return (own,)
    return None


def fsdp_param(param: torch.Tensor | None, shape) -> bool:
    """Whether `param` is an FSDP2 DTensor parameter and `shape` its global shape."""
    return isinstance(param, DTensor) and tuple(shape) == tuple(param.shape)


def empty_like_param(param: DTensor, dtype: torch.dtype) -> DTensor:
    """An uninitialised DTensor with `param`'s mesh, placements and shape (a DCP target)."""
    local = torch.empty(param.to_local().shape, dtype=dtype, device=param.to_local().device)
    return DTensor.from_local(local, param.device_mesh, param.placements, run_check=False,
                              shape=param.shape, stride=param.stride())


def shard_like_param(full: torch.Tensor, param: DTensor) -> DTensor:
    """A full tensor cut to `param`'s placements locally (every rank holds `full`)."""
    return distribute_tensor(full.to(param.to_local().device), param.device_mesh,
                             param.placements, src_data_rank=None)
