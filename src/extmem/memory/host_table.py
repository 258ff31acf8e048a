"""Value tables served from host memory: rows are gathered on the CPU per read.

Engram (2026) and Gemma 3n's per-layer embeddings keep their very large lookup tables out of
accelerator memory: a step only needs the rows its lookups pick, so those rows are gathered
from host memory (or a memory-mapped file) and only the (B, T, d_v) result moves to the
accelerator. `HostValueTable` does this for any lookup (`memory.table_storage`):

- the weight stays a CPU tensor with its own dtype when the model is moved or converted
  (`.to("cuda")`, `.to(torch.bfloat16)`, `.half()`, ...: `_apply` skips it, while any other
  parameter or buffer of the module converts as usual). Its gradient and optimizer state
  therefore live on the CPU too;
- `read(indices, weights)` copies the (B, T, H, k) indices and weights to the CPU, runs
  ValueTable's bag there (dense or row-sparse gradient alike) and returns the (B, T, d_v) rows
  on the device and in the dtype of `weights`. Autograd flows through both copies: the table
  receives its gradient on the CPU, the read weights theirs on their device. Copying the
  indices synchronises the device once per read.

Storage "mmap": the weight's storage is a shared memory map of a file (`torch.from_file`), so
the table need not fit in RAM: only the parts of the file that reads touch become resident, as
page cache that the kernel can reclaim rather than anonymous memory, and optimizer updates write
through to the file. Residency grows at the kernel's granularity, not per row: a fault maps the
whole cached folio or readahead window around the row (often 64 KiB to 2 MiB; measured with
`extmem bench host-table`), so dense random reads soon map most of the file. The file is a
working store, not a checkpoint: it is (re)created at every build, and the trainer's
checkpoints save the weight into safetensors like any other parameter; `load_state_dict`
copies into the mapped storage in place, so a loaded table stays file-backed. With no file
named, it is created in a fresh temporary directory (`tempfile`, so $TMPDIR) and unlinked at
once: the mapping keeps it alive and the kernel frees the disk space when the table is
released, even if the process is killed.

Initialisation is ValueTable's: N(0, d_v^-1/2) drawn per block of rows from the table's seed
(`extmem.memory.table_init`), so a fixed seed gives the same numbers as a device ValueTable; a
mapped table's rows are drawn in chunks of `MMAP_INIT_ROWS` rows that are written to the file
(never through the mapping, which would make the whole table resident).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from extmem.memory.table import ValueTable
from extmem.memory.table_init import fill_table_rows

MMAP_INIT_ROWS = 65_536  # rows drawn and written per chunk when a mapped table is created


def create_mapped_table(path: Path, num_rows: int, dim: int, dtype: torch.dtype,
                        seed: int, row_start: int = 0) -> torch.Tensor:
    """(Re)create `path` holding rows [row_start, row_start + num_rows) of the N(0, dim^-1/2)
    table of `seed` (`table_init`); returns it mapped shared, (num_rows, dim)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a new file: a table still mapping the old one keeps its own
    with path.open("wb") as file:
        for start in range(0, num_rows, MMAP_INIT_ROWS):
            rows = min(MMAP_INIT_ROWS, num_rows - start)
            chunk = fill_table_rows(torch.empty(rows, dim, dtype=dtype), seed, row_start + start,
                                    dim)  # (rows, dim)
            file.write(chunk.view(torch.uint8).numpy().data)
    flat = torch.from_file(str(path), shared=True, size=num_rows * dim, dtype=dtype)  # (N*d,)
    return flat.view(num_rows, dim)


def anonymous_mapped_table(num_rows: int, dim: int, dtype: torch.dtype, seed: int,
                           row_start: int = 0) -> torch.Tensor:
    """A mapped table whose file, in a fresh temporary directory, is unlinked once mapped."""
    directory = Path(tempfile.mkdtemp(prefix="extmem-table-"))
    try:
        return create_mapped_table(directory / "table.bin", num_rows, dim, dtype, seed, row_start)
    finally:
        shutil.rmtree(directory)


def host_rows(storage: str, file: str, num_rows: int, dim: int, dtype: torch.dtype, seed: int,
              row_start: int = 0) -> torch.Tensor:
    """Rows [row_start, row_start + num_rows) of the table of `seed` in host memory or a mapped
    file (`file`, or an anonymous one): (num_rows, dim)."""
    if storage == "host":
        return fill_table_rows(torch.empty(num_rows, dim, dtype=dtype), seed, row_start, dim)
    if file:
        return create_mapped_table(Path(file), num_rows, dim, dtype, seed, row_start)
    return anonymous_mapped_table(num_rows, dim, dtype, seed, row_start)


class HostValueTable(ValueTable):
    """A ValueTable whose weight stays in host memory ("host") or a mapped file ("mmap")."""

    def __init__(self, num_rows: int, dim: int, sparse: bool = False,
                 dtype: torch.dtype = torch.float32,
                 storage: Literal["host", "mmap"] = "host", file: str = "",
                 materialize: bool = True) -> None:
        if storage not in ("host", "mmap"):
            raise ValueError(f"storage {storage!r}: choose 'host' or 'mmap'")
        if file and storage != "mmap":
            raise ValueError(f"file {file!r} needs storage 'mmap'")
        # a mapped table is drawn into its file, never into RAM: the parent gets no rows;
        # not materialized: a meta weight (shape and seed) for a rank to draw its shard from
        super().__init__(num_rows if storage == "host" or not materialize else 0, dim, sparse,
                         dtype, materialize=materialize)
        self.storage = storage
        self.table_file = file  # "" for host memory or an anonymous (unlinked) mapped file
        if storage == "mmap" and materialize:
            self.weight = nn.Parameter(host_rows(storage, file, num_rows, dim, dtype,
                                                 self.init_seed))  # (N, d_v)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True):
        """Move/convert everything except the weight, which keeps its host device and dtype."""
        weight = self._parameters.pop("weight")
        try:
            return super()._apply(fn, recurse)
        finally:
            self._parameters["weight"] = weight

    def read(self, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """indices, weights (B, T, H, k) on any device -> (B, T, d_v) on the device and in the
        dtype of `weights`, bagged on the host."""
        host = self.weight.device
        rows = super().read(indices.to(host), weights.to(host))  # (B, T, d_v) on the host
        return rows.to(weights.device, weights.dtype)
