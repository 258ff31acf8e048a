"""AdamW with parameter groups declared by name pattern, and the warmup + cosine schedule.

REFERENCE.md section 7: memory value tables want their own group (higher LR, no weight decay).
Every trainable parameter lands in exactly one group: the first group whose patterns match,
else the implicit `default` group.
"""

from __future__ import annotations

import fnmatch
import math

import torch
from torch import nn

from extmem.train.config import TrainConfig


def assign_groups(model: nn.Module, cfg: TrainConfig) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Group name -> [(param name, param)], in declared order, `default` last."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {g.name: [] for g in cfg.param_groups}
    groups["default"] = []
    for name, param in model.named_parameters():  # shared (tied) parameters appear once
        if not param.requires_grad:
            continue
        for group in cfg.param_groups:
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in group.patterns):
                groups[group.name].append((name, param))
                break
        else:
            groups["default"].append((name, param))
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.AdamW, list[dict]]:
    """AdamW over the named groups; returns the optimizer and a table describing the groups."""
    settings = {g.name: g for g in cfg.param_groups}
    param_groups, table = [], []
    for name, members in assign_groups(model, cfg).items():
        if not members:
            continue
        spec = settings.get(name)
        lr = spec.lr if spec is not None and spec.lr is not None else cfg.lr
        wd = (spec.weight_decay if spec is not None and spec.weight_decay is not None
              else cfg.weight_decay)
        param_groups.append({"params": [p for _, p in members], "lr": lr, "base_lr": lr,
                             "weight_decay": wd, "name": name,
                             "param_names": [n for n, _ in members]})
        table.append({"group": name, "tensors": len(members),
                      "params": sum(p.numel() for _, p in members), "lr": lr,
                      "weight_decay": wd,
                      "patterns": ", ".join(spec.patterns) if spec else "(everything else)"})
    optimizer = torch.optim.AdamW(param_groups, betas=(cfg.beta1, cfg.beta2))
    return optimizer, table


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to 1 over warmup_steps, then cosine to min_lr_ratio at the last step."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    decay_steps = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / decay_steps, 1.0)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
