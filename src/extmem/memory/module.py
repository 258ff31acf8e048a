"""Memory = Lookup x Table x Readout (the framing of Baykal et al. 2023, "The Power of External
Memory in Increasing Predictive Model Capacity"; docs/design-space.md).

A memory reads a hidden state `h` (B, T, d) (and the token ids, for lookups that need them) and
returns a tensor shaped like `h`. The lookup picks rows and weights (B, T, H, k), the table
stores the rows, the readout consumes them. Usage counters are buffers of the module: training
reads update `usage`; evaluation can collect into a separate counter set via `collect_usage`.
A table can be shared by several Memory modules (pass `table=`): it is then one tensor in the
state dict, serialised once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from extmem.config import require
from extmem.memory.config import MemoryConfig
from extmem.memory.engram import EngramLookup, EngramReadout
from extmem.memory.experts import ExpertsReadout, expert_row_width, init_expert_table
from extmem.memory.host_table import HostValueTable, PrefetchedRows
from extmem.memory.lsh import LshLookup
from extmem.memory.product_keys import ProductKeyLookup
from extmem.memory.readout import AddReadout, ConcatReadout, GatedReadout, MemoryPlusReadout
from extmem.memory.router import RouterLookup
from extmem.memory.stats import UsageCounters
from extmem.memory.table import ValueTable
from extmem.memory.table_init import tables_deferred
from extmem.memory.token import NgramLookup, TokenLookup

# (cfg, d_model, vocab_size, layer) -> lookup module
LookupBuilder = Callable[[MemoryConfig, int, int, int], nn.Module]
# (cfg, d_model, row width) -> readout module
ReadoutBuilder = Callable[[MemoryConfig, int, int], nn.Module]


def _needs_vocab(cfg: MemoryConfig, vocab_size: int) -> int:
    if vocab_size <= 0:
        raise ValueError(f"the {cfg.lookup} lookup needs the vocabulary size")
    return vocab_size


def lookup_heads(cfg: MemoryConfig) -> int:
    """H of the (B, T, H, k) reads of cfg's lookup, from the config alone (the engram readout
    concatenates one bag per head)."""
    if cfg.lookup in ("ngram", "engram"):
        hashes = getattr(cfg, cfg.lookup)
        return len(hashes.orders) * hashes.heads
    if cfg.lookup in ("product_keys", "lsh"):
        return getattr(cfg, cfg.lookup).heads
    return 1  # token: one row; router: one bag of top-k


# One builder per name of MemoryConfig.lookup / .readout; the keys are exactly the names the
# config's Literals allow (LOOKUPS / READOUTS, checked by tests/memory/test_registries.py).
LOOKUP_BUILDERS: dict[str, LookupBuilder] = {
    "product_keys": lambda cfg, d, vocab, layer: ProductKeyLookup(cfg.product_keys, d),
    "token": lambda cfg, d, vocab, layer: TokenLookup(cfg.token, _needs_vocab(cfg, vocab)),
    "ngram": lambda cfg, d, vocab, layer: NgramLookup(cfg.ngram, _needs_vocab(cfg, vocab)),
    "lsh": lambda cfg, d, vocab, layer: LshLookup(cfg.lsh, d, layer_seed=layer),
    "router": lambda cfg, d, vocab, layer: RouterLookup(cfg.router, d),
    "engram": lambda cfg, d, vocab, layer: EngramLookup(
        cfg.engram, _needs_vocab(cfg, vocab), layer,
        # a shared table is indexed alike at every layer; separate tables take distinct primes
        0 if cfg.share_table else sorted(cfg.layers).index(layer) if layer in cfg.layers else 0),
}
READOUT_BUILDERS: dict[str, ReadoutBuilder] = {
    "add": lambda cfg, d, width: AddReadout(d, width, cfg.value_dropout, cfg.zero_init_output),
    "gated": lambda cfg, d, width: GatedReadout(d, width, cfg.value_dropout,
                                                cfg.zero_init_output),
    "memory_plus": lambda cfg, d, width: MemoryPlusReadout(d, width, cfg.value_dropout,
                                                           cfg.zero_init_output),
    "concat": lambda cfg, d, width: ConcatReadout(d, width, cfg.value_dropout,
                                                  cfg.zero_init_output,
                                                  cfg.concat_into == "altup"),
    "experts": lambda cfg, d, width: ExpertsReadout(d, cfg.experts, cfg.value_dropout),
    "engram": lambda cfg, d, width: EngramReadout(cfg.engram, d, width, lookup_heads(cfg),
                                                  cfg.value_dropout, cfg.zero_init_output),
}


def _builder(registry: dict[str, Callable[..., nn.Module]], field: str,
             name: str) -> Callable[..., nn.Module]:
    require(name in registry, f"memory.{field}: {name!r} is not allowed; choose one of "
                              f"{', '.join(repr(n) for n in registry)}")
    return registry[name]


def build_lookup(cfg: MemoryConfig, d_model: int, vocab_size: int, layer: int) -> nn.Module:
    """The lookup module; it exposes `num_slots`, `reads_per_token`, `flops_per_token(d)`."""
    return _builder(LOOKUP_BUILDERS, "lookup", cfg.lookup)(cfg, d_model, vocab_size, layer)


def build_readout(cfg: MemoryConfig, d_model: int, width: int) -> nn.Module:
    """The readout module for rows `width` wide: `readout(h, table, indices, weights)`."""
    return _builder(READOUT_BUILDERS, "readout", cfg.readout)(cfg, d_model, width)


def row_width(cfg: MemoryConfig, d_model: int) -> int:
    if cfg.readout == "experts":
        return expert_row_width(d_model, cfg.experts)
    return cfg.value_dim or d_model


def table_dtype(cfg: MemoryConfig) -> torch.dtype:
    return torch.bfloat16 if cfg.table_dtype == "bfloat16" else torch.float32


def build_table(cfg: MemoryConfig, d_model: int, num_rows: int) -> ValueTable:
    dtype = table_dtype(cfg)
    width = row_width(cfg, d_model)
    # under `deferred_tables()` a table that will be sharded is only a shape and a seed
    materialize = not (tables_deferred() and cfg.readout != "experts")
    if cfg.table_storage == "device":
        table = ValueTable(num_rows, width, sparse=cfg.sparse_updates, dtype=dtype,
                           materialize=materialize)
    else:  # host memory or a mapped file, rows gathered on the CPU (extmem.memory.host_table)
        table = HostValueTable(num_rows, width, sparse=cfg.sparse_updates, dtype=dtype,
                               storage=cfg.table_storage, file=cfg.table_file,
                               materialize=materialize)
    if cfg.readout == "experts":
        init_expert_table(table, d_model, cfg.experts.hidden, cfg.zero_init_output)
    if cfg.freeze_table:  # a frozen random table: no gradient, no optimizer state
        table.weight.requires_grad_(False)
    return table


class Memory(nn.Module):
    def __init__(self, cfg: MemoryConfig, d_model: int, vocab_size: int = 0, layer: int = 0,
                 table: ValueTable | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_model = d_model
        self.value_dim = row_width(cfg, d_model)
        self.lookup = build_lookup(cfg, d_model, vocab_size, layer)
        self.table = table if table is not None else build_table(cfg, d_model, self.lookup.num_slots)
        if self.table.num_rows != self.lookup.num_slots:
            raise ValueError(f"shared table has {self.table.num_rows} rows, the lookup needs "
                             f"{self.lookup.num_slots}")
        self.readout = build_readout(cfg, d_model, self.value_dim)
        self.usage = UsageCounters(self.lookup.num_slots)
        self.altup_first_block: int | None = None  # AltUp memory block for concat_into="altup"
        self._collectors: list[UsageCounters] = []
        # memory.prefetch: the model calls `start_prefetch` before its first layer (a flag, so
        # a benchmark can switch it); the pending prefetch and the inputs it was made from
        self.prefetch = cfg.prefetch
        self._prefetched: tuple[tuple, PrefetchedRows] | None = None

    @property
    def num_slots(self) -> int:
        return self.table.num_rows

    @torch.compiler.disable  # a thread pool call: eager even in a compiled model
    def start_prefetch(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None,
                       past_ids: torch.Tensor | None = None,
                       past_padding: torch.Tensor | None = None) -> None:
        """Compute this memory's row ids from the tokens (B, T) and start gathering its rows on
        the host table's background thread (`HostValueTable.prefetch`); the next forward on
        these same tensors reads them. A table that is not a HostValueTable (a rank's shard
        under train.table_sharding = "rows", read across ranks) is read as usual: no-op."""
        if not hasattr(self.lookup, "row_ids"):
            raise ValueError(f"memory.prefetch: the {self.cfg.lookup} lookup cannot prefetch")
        if not isinstance(self.table, HostValueTable):
            return
        if self._prefetched is not None:  # an earlier prefetch was never read
            self.table.prefetch_misses += 1
        ids = self.lookup.row_ids(input_ids, past_ids, padding_mask, past_padding)  # (B, T, H)
        self._prefetched = ((input_ids, padding_mask, past_ids, past_padding),
                            self.table.prefetch(ids, input_ids.device))

    @torch.compiler.disable  # a thread pool call: eager even in a compiled model
    def warm(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None) -> None:
        """memory.prefetch on a mapped table: start reading into the page cache the rows that a
        later forward on these tokens (B, T) will read (`HostValueTable.warm`); the trainer
        calls it with the next step's tokens. Other tables: no-op."""
        if not isinstance(self.table, HostValueTable) or not hasattr(self.lookup, "row_ids"):
            return
        self.table.warm(self.lookup.row_ids(input_ids, None, padding_mask))  # (B, T, H)

    def _take_prefetched(self, input_ids: torch.Tensor | None, padding_mask: torch.Tensor | None,
                         past_ids: torch.Tensor | None,
                         past_padding: torch.Tensor | None) -> PrefetchedRows | None:
        """The pending prefetch if it was made from these very tensors, else None (dropped)."""
        if self._prefetched is None:
            return None
        made_from, handle = self._prefetched
        self._prefetched = None
        if all(a is b for a, b in zip(made_from, (input_ids, padding_mask, past_ids,
                                                  past_padding), strict=True)):
            return handle
        self.table.prefetch_misses += 1
        return None

    def forward(self, h: torch.Tensor, input_ids: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None,
                past_ids: torch.Tensor | None = None,
                state: dict[str, torch.Tensor] | None = None,
                past_padding: torch.Tensor | None = None) -> torch.Tensor | None:
        """h (B, T, d) -> (B, T, d), or None for a concat readout that writes into AltUp blocks
        (its rows are then taken with `pop_altup_rows`).

        input_ids (B, T) are the tokens at these positions, padding_mask (B, T) is True at
        padding, past_ids (B, P) are earlier tokens during cached decoding (n-gram lookups),
        past_padding (B, P) True where they are padding (a left-padded prompt's).
        `state` is this memory's own dict in the decoding cache (`DecodeCache.memory_state`):
        a readout that mixes positions (Engram's convolution) keeps its past inputs there.
        """
        indices, weights = self.lookup(h, input_ids=input_ids, padding_mask=padding_mask,
                                       past_ids=past_ids,
                                       past_padding=past_padding)  # (B, T, H, k) each
        if self.training:
            self.usage.record(indices, weights, padding_mask)
        for collector in self._collectors:
            collector.record(indices, weights, padding_mask)
        extra = {}
        if getattr(self.readout, "mixes_positions", False):
            if past_ids is not None and past_ids.shape[1] and state is None:
                raise ValueError(f"the {self.cfg.readout} readout mixes positions: cached "
                                 "decoding must pass this memory's state (state=)")
            extra = {"padding_mask": padding_mask, "state": state}
        handle = self._take_prefetched(input_ids, padding_mask, past_ids, past_padding)
        if handle is None:
            return self.readout(h, self.table, indices, weights, **extra)
        with self.table.use_prefetched(handle):  # the read bags the prefetched rows
            return self.readout(h, self.table, indices, weights, **extra)

    def pop_altup_rows(self) -> torch.Tensor | None:
        """Rows (B, T, d_v) of the last forward for AltUp's memory blocks, once (else None)."""
        rows = getattr(self.readout, "pending_rows", None)
        if rows is not None:
            self.readout.pending_rows = None
        return rows

    def pop_aux_loss(self) -> torch.Tensor | None:
        """The lookup's auxiliary loss of the last training forward (router balance), once."""
        aux = getattr(self.lookup, "aux_loss", None)
        if aux is not None:
            self.lookup.aux_loss = None
        return aux

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
        return self.lookup.reads_per_token

    def flops_per_token(self) -> int:
        return (self.lookup.flops_per_token(self.d_model)
                + self.readout.flops_per_token(self.reads_per_token(), self.value_dim, self.d_model))
