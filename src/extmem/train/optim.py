"""Optimizers per parameter group declared by name pattern, and the warmup + cosine schedule
(which a group with `schedule = "constant"` skips).

Memory value tables want their own group (higher LR, no weight decay): Lample et al. 2019 train
the values with their own Adam at a constant 1e-3; see docs/performance.md.
Every trainable parameter lands in exactly one group: the first group whose patterns match,
else the implicit `default` group. Each group names its optimizer (AdamW by default; lazy Adam
or row-wise Adagrad for row-sparse tables, `extmem.train.sparse_optim`); the groups of one
kind share one optimizer and all are driven as one `OptimizerSet`.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from extmem.errors import ConfigError
from extmem.memory.table import ValueTable
from extmem.run.config import TrainConfig, matching_group
from extmem.train.sparse_optim import LazyAdam, OptimizerSet, RowwiseAdagrad


def assign_groups(model: nn.Module, cfg: TrainConfig) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Group name -> [(param name, param)], in declared order, `default` last."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {g.name: [] for g in cfg.param_groups}
    groups["default"] = []
    for name, param in model.named_parameters():  # shared (tied) parameters appear once
        if not param.requires_grad:
            continue
        group = matching_group(name, cfg.param_groups)
        groups[group.name if group is not None else "default"].append((name, param))
    return groups


def _sparse_tables(model: nn.Module) -> set[int]:
    """ids of the parameters that receive row-sparse gradients."""
    return {id(m.weight) for m in model.modules() if isinstance(m, ValueTable) and m.sparse}


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[OptimizerSet, list[dict]]:
    """One optimizer per kind over the named groups; returns the set and a table of groups."""
    settings = {g.name: g for g in cfg.param_groups}
    sparse = _sparse_tables(model)
    by_kind: dict[str, list[dict]] = {}
    table = []
    for name, members in assign_groups(model, cfg).items():
        if not members:
            continue
        spec = settings.get(name)
        kind = spec.optimizer if spec is not None else "adamw"
        if kind == "adamw":
            for pname, param in members:
                if id(param) in sparse:
                    raise ConfigError(
                        f"train.param_groups[{name}].optimizer: 'adamw' cannot take the "
                        f"row-sparse gradient of {pname} (memory.sparse_updates = true); use "
                        "'lazy_adam' or 'rowwise_adagrad' for that group")
        lr = spec.lr if spec is not None and spec.lr is not None else cfg.lr
        wd = (spec.weight_decay if spec is not None and spec.weight_decay is not None
              else cfg.weight_decay)
        schedule = spec.schedule if spec is not None else "shared"
        by_kind.setdefault(kind, []).append(
            {"params": [p for _, p in members], "lr": lr, "base_lr": lr, "weight_decay": wd,
             "name": name, "param_names": [n for n, _ in members], "schedule": schedule})
        table.append({"group": name, "tensors": len(members),
                      "params": sum(p.numel() for _, p in members), "lr": lr,
                      "weight_decay": wd, "optimizer": kind, "schedule": schedule,
                      "patterns": ", ".join(spec.patterns) if spec else "(everything else)"})
    betas = (cfg.beta1, cfg.beta2)
    optimizers: dict[str, torch.optim.Optimizer] = {}
    for kind, groups in by_kind.items():
        if kind == "adamw":
            optimizers[kind] = adamw(groups, betas)
        elif kind == "lazy_adam":
            optimizers[kind] = LazyAdam(groups, betas=betas)
        else:
            optimizers[kind] = RowwiseAdagrad(groups)
    return OptimizerSet(optimizers), table


def adamw(groups: list[dict], betas: tuple[float, float]) -> torch.optim.AdamW:
    """torch's AdamW, with its fused kernel wherever that runs: plain (not DTensor)
    parameters on CPU (torch >= 2.4) or CUDA. The fused kernel makes one pass over each
    tensor instead of the for-loop implementation's ~10 (on CPU torch does not pick it by
    itself); it computes the same update, equal to the for-loop one to float32 rounding.
    A 2.1M-row value table's step takes ~4x less time (docs/performance.md). Elsewhere
    (FSDP2's DTensors, an older torch) the default implementation."""
    if not any(isinstance(p, DTensor) for group in groups for p in group["params"]):
        with contextlib.suppress(RuntimeError):  # no fused kernel here: the default below
            return torch.optim.AdamW(groups, betas=betas, fused=True)
    return torch.optim.AdamW(groups, betas=betas)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to 1 over warmup_steps, then cosine to min_lr_ratio at the last step."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    decay_steps = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / decay_steps, 1.0)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine


def set_lr(optimizer: torch.optim.Optimizer | OptimizerSet, factor: float) -> None:
    """Each group's lr = its base lr x the schedule's `factor`; a "constant" group
    (ParamGroupConfig.schedule) keeps its base lr."""
    for group in optimizer.param_groups:
        shared = group.get("schedule", "shared") == "shared"
        group["lr"] = group["base_lr"] * (factor if shared else 1.0)
