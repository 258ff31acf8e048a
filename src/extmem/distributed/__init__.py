"""Training on several processes with `torch.distributed` (torchrun): data-parallel dense core
(DDP), memory tables sharded across ranks, distributed checkpoints (docs/distributed.md)."""

from extmem.distributed.context import DistContext, init_distributed

__all__ = ["DistContext", "init_distributed"]
