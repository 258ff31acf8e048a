"""`train.compile`: torch.compile the dense parts of a model that carries memory.

Inductor does not lower the row-sparse table backward (docs/performance.md, "torch.compile"),
and the lookups' data-dependent top-k / gathers gain little from it. So every `Memory` module runs
eagerly (`torch.compiler.disable` on its forward: a clean graph break around it) while the
attention, FFN, norms and output head around it are compiled.
"""

from __future__ import annotations

import torch
from torch import nn

from extmem.memory.module import Memory


def eager_memories(model: nn.Module) -> int:
    """Exclude every Memory forward from compilation; returns how many were wrapped."""
    count = 0
    for module in model.modules():
        if isinstance(module, Memory) and not getattr(module, "_eager_forward", False):
            module.forward = torch.compiler.disable(module.forward, recursive=True)
            module._eager_forward = True
            count += 1
    return count


def compile_model(model: nn.Module) -> nn.Module:
    """A compiled view of `model` (same parameters) for the training forward."""
    eager_memories(model)
    return torch.compile(model)
