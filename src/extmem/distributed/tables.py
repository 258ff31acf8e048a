"""Memory tables sharded across ranks (row-wise or column-wise), for data-parallel training.

Every rank holds 1/W of each value table: `rows` gives rank r the rows
[r*ceil(N/W), (r+1)*ceil(N/W)) (all columns), `columns` gives it the same slice of the d_v
columns of every row (torch.chunk / DTensor `Shard` semantics, so checkpoints can be
written as DTensors). A read on W ranks, each with its own n bags of r reads:
1. the bags' row ids and weights are gathered from all ranks: (W*n, r);
2. each rank sums, for all W*n bags, the reads it can serve from its shard (`rows`: the reads
   of rows it owns; `columns`: every read, its columns only), a partial (W*n, d_v);
3. the partials are summed across ranks and each rank keeps its own n bags.
Gradients: a shard's gradient sums over every rank's tokens, so it is scaled by 1/W to equal
the gradient of the global mean loss (what DDP gives the replicated parameters). The reads'
weights get their exact gradient back on the rank they came from. With `sparse_updates`, a
shard's gradient is row-sparse over the rows it served (`F.embedding_bag(sparse=True)`), so
the lazy optimizers update, on each rank, only its own rows that were read.

Usage counters record every rank's reads (the gathered ids), so they are identical on all
ranks and equal to a one-process run's.

A table is never whole on a rank: the model is built under `deferred_tables()` (the table a
meta tensor: shape and seed), and each rank draws only its shard's rows or columns from the
table's block-seeded generators (`extmem.memory.table_init`), the numbers one process would
hold there. Host-memory and memory-mapped tables (`memory.table_storage`) shard by rows: each
rank keeps its row range in host memory or in its own file (`table_file` + ".rank{r}"),
gathers its reads on the CPU and sends the (W*n, d_v) partial sums to the device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from extmem.distributed.collectives import gather_from_ranks, scale_grad, sum_to_own_rows
from extmem.distributed.context import DistContext
from extmem.errors import ConfigError
from extmem.memory.host_table import HostValueTable, host_rows
from extmem.memory.module import Memory
from extmem.memory.stats import UsageCounters
from extmem.memory.table import ValueTable
from extmem.memory.table_init import fill_table_rows

LAYOUTS = ("rows", "columns", "replicate")


def shard_range(size: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of rank's chunk of `size` (torch.chunk semantics: ceil-sized chunks)."""
    chunk = math.ceil(size / world)
    start = min(rank * chunk, size)
    return start, min(start + chunk, size)


class ShardedValueTable(ValueTable):
    """This rank's shard of a (N, d_v) value table; `read` serves reads from all ranks."""

    def __init__(self, full: ValueTable, layout: str, ctx: DistContext) -> None:
        nn.Module.__init__(self)
        self.sparse = full.sparse
        self.layout = layout
        self.world_size = ctx.world_size
        self.global_shape = tuple(full.weight.shape)  # (N, d_v)
        self.init_seed = full.init_seed
        self.storage = getattr(full, "storage", "device")  # "device" | "host" | "mmap"
        self.shard_dim = 0 if layout == "rows" else 1
        self.start, self.stop = shard_range(self.global_shape[self.shard_dim], ctx.rank,
                                            ctx.world_size)
        self.weight = nn.Parameter(self._local(full, ctx.rank),
                                   requires_grad=full.weight.requires_grad)

    def _local(self, full: ValueTable, rank: int) -> torch.Tensor:
        """This rank's part of `full`: cut from its rows, or drawn from its seed if it is
        a meta table (never materialised whole)."""
        size = self.stop - self.start
        if not full.weight.is_meta:
            return full.weight.detach().narrow(self.shard_dim, self.start, size).clone()
        num_rows, dim = self.global_shape
        dtype = full.weight.dtype
        if self.storage != "device":  # rows only (shard_tables refuses columns)
            file = f"{full.table_file}.rank{rank}" if getattr(full, "table_file", "") else ""
            return host_rows(self.storage, file, size, dim, dtype, self.init_seed, self.start)
        if self.shard_dim == 0:
            return fill_table_rows(torch.empty(size, dim, dtype=dtype), self.init_seed,
                                   self.start, dim)  # (N/W, d_v)
        return fill_table_rows(torch.empty(num_rows, size, dtype=dtype), self.init_seed, 0, dim,
                               self.start)  # (N, d_v/W)

    def _apply(self, fn, recurse: bool = True):
        """A host or mapped shard keeps its CPU weight when the model moves (as HostValueTable)."""
        if self.storage == "device":
            return super()._apply(fn, recurse)
        weight = self._parameters.pop("weight")
        try:
            return super()._apply(fn, recurse)
        finally:
            self._parameters["weight"] = weight

    @property
    def num_rows(self) -> int:
        return self.global_shape[0]

    def shard(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's part of a full-table-shaped tensor (N, d_v), or a per-row one (N,)."""
        if tensor.dim() == 1 and self.shard_dim == 0:
            return tensor[self.start:self.stop]
        return tensor.narrow(self.shard_dim, self.start, self.stop - self.start)

    def read(self, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """indices, weights (B, T, H, k) -> weighted sum of rows (B, T, d_v), all shards."""
        lead = indices.shape[:-2]
        bags = indices.reshape(-1, indices.shape[-2] * indices.shape[-1])  # (n, r)
        per_read = weights.reshape(bags.shape).to(self.weight.dtype)  # (n, r)
        all_bags = gather_from_ranks(bags)  # (W*n, r) global row ids
        all_weights = gather_from_ranks(per_read)  # (W*n, r)
        device = all_bags.device
        table = self.weight
        all_bags, all_weights = all_bags.to(table.device), all_weights.to(table.device)  # host
        if table.requires_grad and torch.is_grad_enabled():
            table = scale_grad(table, 1.0 / self.world_size)  # gradient of the global mean
        if self.layout == "rows":
            own = (all_bags >= self.start) & (all_bags < self.stop)  # (W*n, r)
            counts = own.sum(1)  # (W*n,) reads this shard serves per bag
            offsets = counts.cumsum(0) - counts  # (W*n,)
            partial = F.embedding_bag(all_bags[own] - self.start, table, offsets, mode="sum",
                                      per_sample_weights=all_weights[own], sparse=self.sparse)
        else:
            partial = F.embedding_bag(all_bags, table, mode="sum", per_sample_weights=all_weights,
                                      sparse=self.sparse)  # (W*n, d_local)
            partial = F.pad(partial, (self.start, self.global_shape[1] - self.stop))
        out = sum_to_own_rows(partial.to(device))  # (n, d_v)
        out = out.to(torch.promote_types(out.dtype, weights.dtype))  # bf16 table: fp32 out
        return out.view(*lead, self.global_shape[1])  # (B, T, d_v)


class GlobalUsageCounters(UsageCounters):
    """Usage counters that record the reads of every rank (identical on all ranks)."""

    def record(self, indices: torch.Tensor, weights: torch.Tensor,
               padding_mask: torch.Tensor | None = None) -> None:
        indices, weights = gather_from_ranks(indices), gather_from_ranks(weights.detach())
        if padding_mask is not None:
            padding_mask = gather_from_ranks(padding_mask)
        super().record(indices, weights, padding_mask)


def _global_counters(counters: UsageCounters) -> GlobalUsageCounters:
    out = GlobalUsageCounters(counters.counts.numel()).to(counters.counts.device)
    out.load_state_dict(counters.state_dict())
    return out


def shard_tables(model: nn.Module, layout: str, ctx: DistContext) -> dict[str, ShardedValueTable]:
    """Replace every plain value table (shared ones once) by this rank's shard, in place.

    Returns parameter name -> sharded table. Expert tables (their rows are whole expert
    networks, read by index, not as a bag) stay replicated and data-parallel.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"train.table_sharding: {layout!r} is not allowed; choose one of "
                          f"{', '.join(repr(x) for x in LAYOUTS)}")
    for memory in (m for m in model.modules() if isinstance(m, Memory)):
        memory.usage = _global_counters(memory.usage)
    if layout == "replicate" or not ctx.enabled:
        return {}
    replaced: dict[int, ShardedValueTable] = {}
    for memory in (m for m in model.modules() if isinstance(m, Memory)):
        table = memory.table
        if memory.cfg.readout == "experts":
            continue
        if isinstance(table, HostValueTable) and layout != "rows":
            raise ConfigError(f"train.table_sharding = {layout!r} needs device tables; "
                              f"memory.table_storage = {table.storage!r} tables shard by rows "
                              "only (use table_sharding = 'rows' or 'replicate')")
        if id(table) not in replaced:
            replaced[id(table)] = ShardedValueTable(table, layout, ctx)
        memory.table = replaced[id(table)]
    return sharded_tables(model)


def sharded_tables(model: nn.Module) -> dict[str, ShardedValueTable]:
    """Parameter name -> this rank's table shard, for every sharded table of `model` (once)."""
    out: dict[str, ShardedValueTable] = {}
    for name, module in model.named_modules():
        if isinstance(module, ShardedValueTable) and all(t is not module for t in out.values()):
            out[f"{name}.weight"] = module
    return out
