"""Deterministic, shardable initialisation of value tables (docs/distributed.md).

A table of N rows x d_v is N(0, d_v^-1/2) (Lample et al. 2019, Sec. 3.2; the XLM code) drawn
block by block: rows [b*INIT_BLOCK_ROWS, (b+1)*INIT_BLOCK_ROWS) come from a generator seeded
by (the table's seed, b) alone. Any process can therefore produce any row range (or column
range) of the table without the rest of it, so a rank holding 1/W of a table initialises
only that part, and W ranks hold exactly the numbers one process would (tests/distributed).

The table's seed is drawn from the global torch RNG when the table is built
(`draw_table_seed`), so it follows `train.seed` and the build order like every other
parameter, and every rank draws the same one.

`deferred_tables()`: while it is active, `extmem.memory.module.build_table` builds device
value tables on the meta device (shape and seed, no storage), for
`extmem.distributed.tables.shard_tables` to materialise only this rank's shard.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterator

import torch

INIT_BLOCK_ROWS = 4096  # rows drawn from one generator; a shard boundary costs < 2 blocks
_DEFERRED: contextvars.ContextVar[bool] = contextvars.ContextVar("extmem_tables_deferred",
                                                                 default=False)


def draw_table_seed() -> int:
    """A table's seed, from the global torch (CPU) RNG (so `torch.manual_seed` fixes it); drawn
    on the CPU even under a default-device context (Hugging Face builds models on "meta")."""
    return int(torch.randint(0, 2 ** 62, (1,), device="cpu"))


def _block_seed(seed: int, block: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2 ** 63 - 1)


@torch.no_grad()
def fill_table_rows(out: torch.Tensor, seed: int, row_start: int, dim: int,
                    col_start: int = 0) -> torch.Tensor:
    """Fill `out` (rows, cols) with rows [row_start, row_start + rows) and columns
    [col_start, col_start + cols) of the (N, dim) table of `seed`; returns `out`."""
    rows, cols = out.shape
    if rows == 0 or cols == 0:
        return out
    generator = torch.Generator()  # CPU: the same numbers whatever device `out` is on
    std = dim ** -0.5
    first, last = row_start // INIT_BLOCK_ROWS, (row_start + rows - 1) // INIT_BLOCK_ROWS
    for block in range(first, last + 1):
        generator.manual_seed(_block_seed(seed, block))
        values = torch.empty(INIT_BLOCK_ROWS, dim, device="cpu").normal_(
            0, std, generator=generator)  # (R, d)
        lo = max(row_start, block * INIT_BLOCK_ROWS)
        hi = min(row_start + rows, (block + 1) * INIT_BLOCK_ROWS)
        piece = values[lo - block * INIT_BLOCK_ROWS:hi - block * INIT_BLOCK_ROWS,
                       col_start:col_start + cols]  # (hi - lo, cols)
        out[lo - row_start:hi - row_start].copy_(piece)
    return out


@contextlib.contextmanager
def deferred_tables(active: bool = True) -> Iterator[None]:
    """Build device value tables on the meta device while active (for sharding)."""
    token = _DEFERRED.set(active)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def tables_deferred() -> bool:
    return _DEFERRED.get()
