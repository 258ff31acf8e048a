"""Data parallelism for the dense core (DDP or FSDP2) beside sharded memory tables.

`train.data_parallel = "ddp"`: the dense parameters are replicated and their gradients
averaged by `torch.nn.parallel.DistributedDataParallel`. `"fsdp"`: they are sharded across
the ranks by FSDP2 (`torch.distributed.fsdp.fully_shard`; Zhao et al. 2023, "PyTorch FSDP"),
which all-gathers a block's parameters for its forward and backward and reduce-scatters
(averages) its gradients, so each rank keeps 1/W of the dense parameters, gradients and
optimizer state; parameters become DTensors with a `Shard(0)` placement. Either way the
sharded tables are left out (each rank owns its shard; `extmem.distributed.tables` averages
their gradients itself). Every rank takes rows [r*B/W, (r+1)*B/W) of the global batch of the
step, so W processes see the same tokens per step as one.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from extmem.distributed.context import DistContext
from extmem.distributed.tables import ShardedValueTable
from extmem.errors import ConfigError


class NullWriter:
    """Metric writer stand-in for ranks other than 0 (only rank 0 writes logs; there the loop
    holds `extmem.train.writers.MetricWriters`)."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def add_histogram(self, *args, **kwargs) -> None:
        pass

    def add_text(self, *args, **kwargs) -> None:
        pass

    def end_session(self, *args, **kwargs) -> None:
        pass

    def close(self, exit_code: int = 0) -> None:
        pass


def check_distributed_config(cfg, ctx: DistContext) -> None:
    """Refuse configs that cannot run on this many processes, in one line each."""
    if not ctx.enabled:
        return
    tc = cfg.train
    if tc.batch_size % ctx.world_size:
        raise ConfigError(f"train.batch_size: {tc.batch_size} must be divisible by the number "
                          f"of processes ({ctx.world_size}); each takes an equal share")
    if tc.data_parallel == "fsdp":
        _check_fsdp(cfg)
    if tc.table_sharding == "columns":
        for group in tc.param_groups:
            if group.optimizer == "rowwise_adagrad":
                raise ConfigError(
                    f"train.param_groups[{group.name}].optimizer: 'rowwise_adagrad' keeps one "
                    "accumulator per row, which column shards cannot share; use "
                    "table_sharding = 'rows' or optimizer = 'lazy_adam'")


def _check_fsdp(cfg) -> None:
    if cfg.train.compile:
        raise ConfigError("train.compile: true is not supported with train.data_parallel = "
                          "'fsdp'; use data_parallel = 'ddp' or compile = false")
    if cfg.train.table_sharding == "replicate":
        for i, memory in enumerate(cfg.model.memories):
            if memory.sparse_updates:
                raise ConfigError(
                    f"model.memories[{i}].sparse_updates: FSDP cannot shard a row-sparse "
                    "gradient; with train.data_parallel = 'fsdp' use table_sharding = 'rows' "
                    "or 'columns', or sparse_updates = false")


def fully_shard_core(model: nn.Module, sharded: dict[str, ShardedValueTable]) -> None:
    """FSDP2 over the dense core of `model` (in place), the sharded tables left out.

    Each block whose parameters no other part of the model shares is its own FSDP unit
    (gathered for its forward, freed after it); the rest (embeddings, tied head, norms,
    shared tables) is the root's unit."""
    ignored = {table.weight for table in sharded.values()}
    blocks = list(getattr(model, "blocks", []))
    owners: dict[int, int] = {}
    for module in [*blocks, model]:
        for param in module.parameters():
            owners[id(param)] = owners.get(id(param), 0) + 1
    for block in blocks:
        own = [p for p in block.parameters() if p not in ignored]
        # a block's parameters are counted once for it and once for the model
        if own and all(owners[id(p)] == 2 for p in own):
            fully_shard(block, ignored_params=ignored)
    fully_shard(model, ignored_params=ignored)


def data_parallel(forward_model: nn.Module, model: nn.Module,
                  sharded: dict[str, ShardedValueTable], device: torch.device) -> nn.Module:
    """DDP over `forward_model` (the model or its compiled view) without the sharded tables."""
    prefix = "" if forward_model is model else "_orig_mod."
    ignore = [prefix + name for name in sharded]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(forward_model, ignore)
    return DistributedDataParallel(
        forward_model, device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False,     # usage counters are kept identical by construction
        find_unused_parameters=False)


@torch.no_grad()
def replica_divergence(model: nn.Module, sharded: dict[str, ShardedValueTable]) -> float:
    """Largest |p - p on rank 0| over the replicated parameters, on every rank (0.0 = DDP kept
    every replica identical; FSDP's sharded parameters are not replicas). Collective."""
    worst = torch.zeros((), dtype=torch.float64)
    for name, param in model.named_parameters():
        if name in sharded or isinstance(param, DTensor):  # FSDP: sharded, not replicated
            continue
        reference = param.detach().clone()
        torch.distributed.broadcast(reference, src=0)
        worst = torch.maximum(worst, (param.detach() - reference).abs().max().double().cpu())
    worst = worst.to(next(model.parameters()).device)
    torch.distributed.all_reduce(worst, op=torch.distributed.ReduceOp.MAX)
    return float(worst)
