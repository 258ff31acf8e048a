"""The process group of a torchrun launch: rank, world size, device, and small reductions.

`torchrun --nproc_per_node=N -m extmem train CONFIG` sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; `init_distributed` reads them and starts the default process group
(gloo on CPU, NCCL on CUDA). Without them (a plain `extmem train`) it returns a one-process
context and nothing distributed happens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from extmem.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def from_main(self, value):
        """Rank 0's value of a picklable object, on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Leave the process group (end of a torchrun command)."""
        if self.enabled and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def gather(self, value) -> list:
        """Every rank's value of a picklable object, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        out = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def mean(self, value: float) -> float:
        """The mean of a Python float over ranks (every rank gets it)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor)
        return float(tensor) / self.world_size


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> DistContext:
    """Start (or join) the default process group when launched by torchrun."""
    if not launched_by_torchrun():
        return DistContext()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise ConfigError(f"LOCAL_RANK {local_rank}: this node has only "
                                  f"{torch.cuda.device_count()} CUDA device(s); lower "
                                  "--nproc_per_node")
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank)


def rank_device(device: torch.device, ctx: DistContext) -> torch.device:
    """One GPU per local rank; CPU stays CPU."""
    return torch.device("cuda", ctx.local_rank) if device.type == "cuda" and ctx.enabled else device
