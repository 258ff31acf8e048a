"""Memory = Lookup x Table x Readout (REFERENCE.md section 1).

A memory reads a hidden state `h` (B, T, d) (and the token ids, for lookups that need them) and
returns a tensor shaped like `h`. The lookup picks rows and weights, the table stores the rows,
the readout consumes them. Usage counters are buffers of the module: training reads update
`usage`; evaluation can collect into a separate counter set via `collect_usage`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from extmem.memory.config import MemoryConfig
from extmem.memory.product_keys import ProductKeyLookup
from extmem.memory.readout import AddReadout
from extmem.memory.stats import UsageCounters
from extmem.memory.table import ValueTable


def build_lookup(cfg: MemoryConfig, d_model: int) -> nn.Module:
    if cfg.lookup == "product_keys":
        return ProductKeyLookup(cfg.product_keys, d_model)
    raise ValueError(f"unknown lookup {cfg.lookup!r}")  # unreachable: validated by config


def build_readout(cfg: MemoryConfig, d_model: int, value_dim: int) -> nn.Module:
    if cfg.readout == "add":
        return AddReadout(d_model, value_dim, cfg.value_dropout, cfg.zero_init_output)
    raise ValueError(f"unknown readout {cfg.readout!r}")  # unreachable: validated by config


class Memory(nn.Module):
    def __init__(self, cfg: MemoryConfig, d_model: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_model = d_model
        self.value_dim = cfg.value_dim or d_model
        self.lookup = build_lookup(cfg, d_model)
        self.table = ValueTable(self.lookup.num_slots, self.value_dim)
        self.readout = build_readout(cfg, d_model, self.value_dim)
        self.usage = UsageCounters(self.lookup.num_slots)
        self._collectors: list[UsageCounters] = []

    @property
    def num_slots(self) -> int:
        return self.table.num_rows

    def forward(self, h: torch.Tensor, input_ids: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None,
                past_ids: torch.Tensor | None = None) -> torch.Tensor:
        """h (B, T, d) -> (B, T, d).

        input_ids (B, T) are the tokens at these positions, padding_mask (B, T) is True at
        padding, past_ids (B, P) are earlier tokens during cached decoding (n-gram lookups).
        """
        indices, weights = self.lookup(h, input_ids=input_ids, padding_mask=padding_mask,
                                       past_ids=past_ids)
        if self.training:
            self.usage.record(indices, weights, padding_mask)
        for collector in self._collectors:
            collector.record(indices, weights, padding_mask)
        return self.readout(h, self.table, indices, weights)

    @contextlib.contextmanager
    def collect_usage(self) -> Iterator[UsageCounters]:
        """Count reads made inside the block into a fresh counter set (e.g. over an eval set)."""
        collector = UsageCounters(self.num_slots).to(self.usage.counts.device)
        self._collectors.append(collector)
        try:
            yield collector
        finally:
            self._collectors.remove(collector)

    def reads_per_token(self) -> int:
        pk = self.cfg.product_keys
        return pk.heads * pk.topk

    def flops_per_token(self) -> int:
        return (self.lookup.flops_per_token(self.d_model)
                + self.readout.flops_per_token(self.reads_per_token(), self.value_dim, self.d_model))
