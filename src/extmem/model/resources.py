"""Up-front check that a model's memory tables fit, from its config alone.

A value table is allocated whole when the model is built (`ValueTable`: rows x width), so a
config with product_keys.n_keys = 1,000,000 (10^12 rows) would ask the allocator for hundreds of
TB and die with a traceback. `check_table_memory` estimates, before anything is built, what
each memory's tables will hold and compares the sum with the memory available:

- the tables: rows x width x bytes per element of `table_dtype`, with the rows and width the
  memory is built with (`MemoryConfig.num_slots`, `extmem.memory.module.row_width`); a shared
  table (`share_table`) once;
- their optimizer state, for the optimizer of their parameter group (`train.param_groups`,
  `extmem.train.optim`): AdamW two moments like the table (torch keeps `exp_avg` /
  `exp_avg_sq` in the parameter's dtype), lazy Adam two float32 moments, row-wise Adagrad one
  float32 sum per row; none for a model that is not trained;
- their gradient: one table-sized buffer when dense; a row-sparse gradient (`sparse_updates`)
  grows with the rows a step reads, not with the table, and is left out;
- the usage counters of each memory (`extmem.memory.stats.UsageCounters`: int64 read count,
  float32 weight, int64 last step per row), one set per layer, shared table or not.

- the memory's dense parameters at every layer (`dense_parameters`, float32; what the
  accounting calls memory_other): its lookup's (the product-key query network and sub-keys,
  ~sqrt(rows); a router's d x entries projection; the hashed lookups have none) and its
  readout's (projections, gates, norms, Engram's W_v / W_k and convolution); in training, their
  gradient and two optimizer moments (AdamW / lazy Adam; a row-wise Adagrad group over them
  keeps less, so the estimate is then an upper bound). They live with the model, wherever the
  table is.

A table with `table_storage = "mmap"` lives in a file: its rows count as file bytes, not RAM
(its gradient and optimizer state are in RAM). The model is built in RAM; on an accelerator,
the tables with `table_storage = "device"` (with their gradients and optimizer state), the
dense parameters and the counters are also checked against the device's free memory.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from extmem.errors import ConfigError
from extmem.memory.config import MemoryConfig
from extmem.memory.module import lookup_heads, row_width, table_dtype
from extmem.memory.stats import UsageCounters
from extmem.model.config import ModelConfig

SHRINK = ("shrink the tables (fewer rows: product_keys.n_keys, token.rows, ngram.rows, lsh.bits, "
          "router.entries; a smaller value_dim; table_dtype = 'bfloat16'; table_storage = "
          "'mmap' keeps a table in a file)")

# the name of a table's parameter -> the optimizer that trains it, or None (not trained)
OptimizerFor = Callable[[str], "str | None"]

# optimizer -> bytes of state for a table of (rows, width, bytes per element)
_STATE_BYTES: dict[str, Callable[[int, int, int], int]] = {
    "adamw": lambda rows, width, size: 2 * rows * width * size,
    "lazy_adam": lambda rows, width, size: 2 * rows * width * 4,
    "rowwise_adagrad": lambda rows, width, size: rows * 4,
}


# bytes per element of the dense (non-table) parameters: the model is built in float32
DENSE_ELEMENT_BYTES = 4
# a trained dense parameter also holds a gradient and two moments (AdamW / lazy Adam), each
# its own size
DENSE_TRAINING_COPIES = 3


def _product_key_parameters(cfg: MemoryConfig, d_model: int) -> int:
    """Query network d -> H * key_dim (with bias), its norm's gain and bias (none for "none"),
    sub-keys (H, 2, n_keys, key_dim / 2)."""
    pk = cfg.product_keys
    query = pk.heads * pk.key_dim
    norm = 0 if pk.query_norm == "none" else 2 * query
    return d_model * query + query + norm + pk.heads * 2 * pk.n_keys * (pk.key_dim // 2)


def _engram_readout_parameters(cfg: MemoryConfig, d_model: int) -> int:
    """W_v e (with bias); the gate's W_k e (with bias) and its two RMSNorm gains; the
    depthwise convolution's d x kernel. e is the heads' rows side by side (or their mean)."""
    engram, value_dim = cfg.engram, row_width(cfg, d_model)
    width = lookup_heads(cfg) * value_dim if engram.combine == "concat" else value_dim
    value = width * d_model + d_model
    gate = width * d_model + d_model + 2 * d_model if engram.gate else 0
    conv = d_model * engram.conv_kernel if engram.conv else 0
    return value + gate + conv


def _add_readout_parameters(cfg: MemoryConfig, d_model: int) -> int:
    """The output projection d_v -> d, there when d_v != d or the output starts at zero."""
    value_dim = row_width(cfg, d_model)
    projected = value_dim != d_model or cfg.zero_init_output
    return value_dim * d_model if projected else 0


# lookup / readout name -> its parameters at one layer, from (cfg, d_model); the names are
# exactly those of extmem.memory.module's builders (tests/model/test_resources.py)
LOOKUP_PARAMETERS: dict[str, Callable[[MemoryConfig, int], int]] = {
    "product_keys": _product_key_parameters,
    "token": lambda cfg, d: 0,   # hashed or direct token ids: buffers only
    "ngram": lambda cfg, d: 0,
    "lsh": lambda cfg, d: 0,     # frozen random hyperplanes: a buffer
    "router": lambda cfg, d: d * cfg.router.entries,  # the d x entries projection, no bias
    "engram": lambda cfg, d: 0,
}
READOUT_PARAMETERS: dict[str, Callable[[MemoryConfig, int], int]] = {
    "add": _add_readout_parameters,
    # W_g d -> d_v, W_up d_v -> d, the RMSNorm gain
    "gated": lambda cfg, d: 2 * d * row_width(cfg, d) + d,
    "memory_plus": lambda cfg, d: 2 * d * row_width(cfg, d),  # W_1, W_2
    # [h ; row] -> d, unless the row goes into AltUp's memory blocks
    "concat": lambda cfg, d: (0 if cfg.concat_into == "altup"
                              else (d + row_width(cfg, d)) * d),
    "experts": lambda cfg, d: 0,  # the experts' weights are the table's rows
    "engram": _engram_readout_parameters,
}


def dense_parameters(cfg: MemoryConfig, d_model: int) -> int:
    """Parameters of memory `cfg`'s lookup and readout at one layer (each layer has its own,
    shared table or not)."""
    return (LOOKUP_PARAMETERS[cfg.lookup](cfg, d_model)
            + READOUT_PARAMETERS[cfg.readout](cfg, d_model))


@functools.cache
def counter_bytes_per_slot() -> int:
    """Bytes per slot of one memory's usage counters (its per-slot buffers)."""
    return sum(b.element_size() for b in UsageCounters(1).buffers() if b.dim() == 1)


def gib(size: int) -> str:
    return f"{size / (1 << 30):,.2f} GiB"


@dataclass(frozen=True)
class TableNeed:
    """Bytes one configured memory needs for its tables, at every layer it sits at."""

    name: str               # where it is configured, e.g. "model.memories[0]"
    tables: int             # separate tables: one per layer, or 1 with share_table
    rows: int               # per table (the first: an unshared engram memory's later tables
                            # take larger primes, a few rows more)
    total_rows: int         # the rows of all its tables
    width: int
    dtype: torch.dtype
    storage: str            # table_storage: "device" | "host" | "mmap"
    optimizer: str | None   # None: not trained
    table_bytes: int        # the rows of all its tables
    optimizer_bytes: int
    gradient_bytes: int
    counter_bytes: int
    dense_bytes: int = 0           # the lookups' and readouts' parameters, every layer
    dense_training_bytes: int = 0  # their gradient and optimizer moments (trained only)

    @property
    def file_bytes(self) -> int:
        """Table bytes kept in a mapped file rather than RAM."""
        return self.table_bytes if self.storage == "mmap" else 0

    def held(self, pool: str, accelerator: bool) -> dict[str, int]:
        """What lives in `pool` ("RAM" or "device": the accelerator), part -> bytes. The model
        is built in RAM (tables, counters, dense parameters); on an accelerator a device table,
        its gradient and state, the counters and the dense parameters (with theirs) then move
        there, while host tables keep theirs in RAM."""
        trained = {f"{self.optimizer} state": self.optimizer_bytes,
                   "gradient": self.gradient_bytes}
        dense = {"lookup / readout parameters": self.dense_bytes}
        dense_trained = {"their gradient and moments": self.dense_training_bytes}
        if pool == "RAM":
            parts = {"table": self.table_bytes - self.file_bytes}
            if self.storage != "device" or not accelerator:
                parts.update(trained)
            parts.update(dense)
            if not accelerator:
                parts.update(dense_trained)
        else:
            parts = {"table": self.table_bytes, **trained} if self.storage == "device" else {}
            parts.update({**dense, **dense_trained})
        parts["usage counters"] = self.counter_bytes
        return {part: size for part, size in parts.items() if size}

    def describe(self, parts: dict[str, int]) -> str:
        names = list(parts)
        what = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        dtype = str(self.dtype).removeprefix("torch.")
        return (f"{self.name}: {gib(sum(parts.values()))} for {what} of {self.tables} x "
                f"{self.rows:,} rows x {self.width} {dtype}")


def memory_need(cfg: MemoryConfig, d_model: int, vocab_size: int, name: str,
                optimizer: str | None = None) -> TableNeed:
    """What memory `cfg` (at each of cfg.layers) needs in a d_model-wide model; `optimizer`
    (None: not trained) is its table's."""
    table_rows = cfg.table_rows(vocab_size)  # per table: one per layer, or one shared
    width, dtype = row_width(cfg, d_model), table_dtype(cfg)
    dense = len(cfg.layers) * dense_parameters(cfg, d_model) * DENSE_ELEMENT_BYTES
    # a frozen table is not trained; the lookups and readouts still are
    dense_training = DENSE_TRAINING_COPIES * dense if optimizer else 0
    optimizer = None if cfg.freeze_table else optimizer
    table = sum(table_rows) * width * dtype.itemsize
    state = (sum(_STATE_BYTES[optimizer](rows, width, dtype.itemsize) for rows in table_rows)
             if optimizer else 0)
    gradient = table if optimizer and not cfg.sparse_updates else 0
    # every layer counts reads of the rows it indexes (all of a shared table's)
    layer_rows = table_rows * len(cfg.layers) if cfg.share_table else table_rows
    counters = sum(layer_rows) * counter_bytes_per_slot()
    return TableNeed(name, len(table_rows), table_rows[0], sum(table_rows), width, dtype,
                     cfg.table_storage, optimizer, table, state, gradient, counters, dense,
                     dense_training)


def per_rank(need: TableNeed, world: int) -> TableNeed:
    """What one of `world` ranks holds of a row- or column-sharded table: 1/W of the rows,
    their gradient and optimizer state (ceil); the usage counters and the dense lookup /
    readout parameters stay whole on every rank (docs/distributed.md)."""
    def share(size: int) -> int:
        return -(-size // world)
    return dataclasses.replace(need, table_bytes=share(need.table_bytes),
                               optimizer_bytes=share(need.optimizer_bytes),
                               gradient_bytes=share(need.gradient_bytes))


def table_parameter(model: ModelConfig, index: int) -> str:
    """The parameter name of memory `index`'s table in a `Transformer` (a shared table is
    named at its first layer, as `named_parameters` lists it)."""
    first = min(model.memories[index].layers)
    slot = [i for i, _ in model.memories_at(first)].index(index)
    return f"blocks.{first}.memories.{slot}.table.weight"


def table_needs(model: ModelConfig, optimizer_for: OptimizerFor | None = None) -> list[TableNeed]:
    """One TableNeed per configured memory of `model` (vocab_size resolved)."""
    return [memory_need(memory, model.d_model, model.vocab_size, f"model.memories[{i}]",
                        optimizer_for(table_parameter(model, i)) if optimizer_for else None)
            for i, memory in enumerate(model.memories)]


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _meminfo_available(meminfo: Path) -> int | None:
    try:
        lines = meminfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024  # kB
    return None


def _sysconf_available() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _cgroup_headroom(cgroup: Path) -> int | None:
    """The cgroup's memory limit less its usage (v2, else v1); None without a limit."""
    for limit, usage in (("memory.max", "memory.current"),
                         ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        cap = _read_int(cgroup / limit)
        if cap is not None:
            return max(cap - (_read_int(cgroup / usage) or 0), 0)
    return None


def _status_bytes(field: str, status: Path) -> int | None:
    """A `VmSize:` / `VmData:` line of /proc/self/status, in bytes."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _rlimit_headroom(status: Path = Path("/proc/self/status")) -> int | None:
    """What the process's address-space (RLIMIT_AS) or data (RLIMIT_DATA) limit still allows
    (`ulimit -v`, `prlimit --data`): the limit less the current size; None without a limit."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    found = []
    for limit, field in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        cap = resource.getrlimit(limit)[0]
        if cap != resource.RLIM_INFINITY and cap > 0:
            found.append(max(cap - (_status_bytes(field, status) or 0), 0))
    return min(found) if found else None


def available_ram_bytes(meminfo: Path = Path("/proc/meminfo"),
                        cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """RAM this process can still take: MemAvailable (else the free pages `os.sysconf`
    reports), or the cgroup limit's or the process limit's (RLIMIT_AS / RLIMIT_DATA) headroom
    if lower; None if none is known."""
    found = [_meminfo_available(meminfo) or _sysconf_available(), _cgroup_headroom(cgroup),
             _rlimit_headroom()]
    known = [size for size in found if size is not None]
    return min(known) if known else None


def available_device_bytes(device: torch.device) -> int | None:
    """Free memory of an accelerator (CUDA); None where it cannot be asked."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.mem_get_info(device)[0]
    return None


def _refusal(needs: list[TableNeed], held: list[dict[str, int]], pool: str, available: int,
             remedy: str) -> ConfigError:
    listed = "; ".join(n.describe(parts) for n, parts in zip(needs, held, strict=True) if parts)
    files = "".join(f"; {n.name}'s table ({gib(n.file_bytes)}) is a file (table_storage = "
                    "'mmap'), not counted" for n in needs if n.file_bytes)
    total = sum(size for parts in held for size in parts.values())
    return ConfigError(f"memory tables need {gib(total)} of {pool} ({listed}), {gib(available)} "
                       f"available{files}; {SHRINK} or {remedy}")


def check_table_memory(needs: list[TableNeed], device: torch.device,
                       remedy: str = "pass --force") -> None:
    """ConfigError (one line: GiB needed per memory, GiB available, what to shrink, `remedy`)
    if the tables do not fit in RAM or, on an accelerator, in its free memory."""
    accelerator = device.type != "cpu"
    pools = {"RAM": available_ram_bytes()}
    if accelerator:
        pools["device"] = available_device_bytes(device)
    for pool, available in pools.items():
        held = [n.held(pool, accelerator) for n in needs]
        if available is not None and sum(sum(p.values()) for p in held) > available:
            name = pool if pool == "RAM" else f"{device.type} memory"
            raise _refusal(needs, held, name, available, remedy)
