"""What the training loop asks of any model that holds extmem memories, written once.

`Transformer` (extmem's own core) and `PretrainedLM` (a Hugging Face model with memories added,
`extmem.pretrained`) both mix this in: the loop collects the memories' auxiliary losses, tells
their usage counters the step (windowed usage and staleness, Kim & Jung 2020 sec. 4), and hands
the run's tokenizer to lookups that read token text (Engram's tokenizer compression), and
hands the next step's tokens to memories that warm a mapped table a step ahead
(`memory.prefetch`, docs/performance.md).
"""

from __future__ import annotations

import torch
from torch import nn

from extmem.memory.module import Memory


class MemoryHost(nn.Module):
    """Mixin: the memories among a module's submodules, and the calls the loop makes on them."""

    def memory_modules(self) -> list[tuple[str, Memory]]:
        return [(name, m) for name, m in self.named_modules() if isinstance(m, Memory)]

    def aux_loss(self) -> torch.Tensor | None:
        """Sum of the memories' auxiliary losses (router balance / z-loss) of the last training
        forward, already weighted by their coefficients; None when there is none."""
        total = None
        for _, memory in self.memory_modules():
            aux = memory.pop_aux_loss()
            if aux is not None:
                total = aux if total is None else total + aux
        return total

    def use_tokenizer(self, tokenizer: object) -> None:
        """Hand the run's tokenizer to lookups that read token text (Engram's tokenizer
        compression, `extmem.memory.engram`); what they build is saved with the weights."""
        for _, memory in self.memory_modules():
            use = getattr(memory.lookup, "use_tokenizer", None)
            if use is not None:
                use(tokenizer)

    def set_memory_step(self, step: int) -> None:
        """Tell usage counters the current training step (for windowed usage / staleness)."""
        for _, memory in self.memory_modules():
            memory.usage.step.fill_(step)

    def warms_tables(self) -> bool:
        """Whether any memory prefetches from a table it can warm a step ahead (a mapped
        table, `HostValueTable.warm`): only then does the loop draw the next batch early."""
        return any(memory.prefetch and getattr(memory.table, "storage", None) == "mmap"
                   for _, memory in self.memory_modules())

    def warm_tables(self, input_ids: torch.Tensor,
                    padding_mask: torch.Tensor | None = None) -> None:
        """Start reading into the page cache the mapped-table rows that a later forward on the
        tokens (B, T) will read, for every memory with memory.prefetch (`Memory.warm`)."""
        for _, memory in self.memory_modules():
            if memory.prefetch:
                memory.warm(input_ids, padding_mask)
