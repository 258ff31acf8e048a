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

Prefetch (`memory.prefetch`; Engram, Cheng et al. 2026, arXiv 2601.07372, whose lookups depend
on the token ids only, so the rows a step reads are known before its first layer runs and can be
fetched from host memory while the earlier layers compute): `prefetch(ids, device)` flattens the
ids to the host and submits the gather to one background thread (`prefetch_pool`, shared by all
tables, so prefetches run in layer order). The thread finds the distinct rows (`torch.unique`,
sorted, with each read's position among them) and gathers them, `weight[unique]` (U, d): every
page fault of a cold mmap table happens there, off the critical path. On a GPU it gathers into
pinned memory and copies the rows and the read positions to the device on a side CUDA stream,
recording an event. The next `read` whose ids are those ids (`use_prefetched`, set by the
Memory for one read) waits for the thread (and makes the current stream wait for the event),
then bags the compact rows instead of the table.

Warming a step ahead (`warm(ids)`, mapped tables): a cold file's rows cost disk reads that
the layers before the memory are far too short to hide. A training step's tokens are known a
step early, so the trainer hands the next step's row ids to `warm` (`MemoryHost.warm_tables`),
which asks the kernel for their pages on a second background thread (`warm_pool`,
`page_advice.will_need`) while the current step computes; the next step's gather then finds
them in the page cache. Only advice: nothing is copied, so no value can be stale.

Why this is autograd-correct: the thread never builds a graph (it reads `weight.detach()`), and
the read is one custom autograd Function, `_PrefetchedBag`, with `weight` as an input. Its
forward is the bag of the prefetched rows, equal to the bag of the table because those rows are
`weight[unique]` at forward time (nothing writes the table during a forward; the optimizer steps
after backward). Its backward gives the table the gradient of the ordinary read: row-sparse
(`sparse_updates`), exactly `_RowSparseBag`'s on CPU (`row_sparse_grad` over the original ids,
`read_weight_grad` over the same row values); dense, ATen's embedding-bag backward on the
compact rows scattered into a zero (N, d) gradient: the same sums, in the same order, for each
row read (unique ids keep the reads' order). On CPU the outputs and gradients are bitwise those
of the unprefetched read (tested); on a GPU the bag runs there, so they agree up to float
rounding. The alternative, an autograd gather in the thread, would put graph nodes and their
version counters in another thread's hands; only touching pages in the thread would still
leave the gather (and, on a GPU, the copy) on the critical path.

Initialisation is ValueTable's: N(0, d_v^-1/2) drawn per block of rows from the table's seed
(`extmem.memory.table_init`), so a fixed seed gives the same numbers as a device ValueTable; a
mapped table's rows are drawn in chunks of `MMAP_INIT_ROWS` rows that are written to the file
(never through the mapping, which would make the whole table resident).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from extmem.memory.page_advice import will_need
from extmem.memory.read_weight_grad import read_weight_grad
from extmem.memory.sparse import row_sparse_grad
from extmem.memory.table import ValueTable
from extmem.memory.table_init import fill_table_rows

MMAP_INIT_ROWS = 65_536  # rows drawn and written per chunk when a mapped table is created
_pools: dict[str, ThreadPoolExecutor] = {}
_pool_lock = threading.Lock()


def _background_thread(name: str) -> ThreadPoolExecutor:
    """The one background thread called `name` (created on first use)."""
    with _pool_lock:
        if name not in _pools:
            _pools[name] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        return _pools[name]


def prefetch_pool() -> ThreadPoolExecutor:
    """The one background thread that gathers prefetched rows, in layer order."""
    return _background_thread("extmem-prefetch")


def warm_pool() -> ThreadPoolExecutor:
    """The one background thread that asks for a later step's pages (`HostValueTable.warm`);
    apart from the gathers, so a step's gather never queues behind the next step's advice."""
    return _background_thread("extmem-warm")


def _forget_pools() -> None:
    _pools.clear()  # a forked child (a data-loader worker) has no threads: make its own


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


@dataclass
class PrefetchedRows:
    """One prefetch: the ids read (R,) on the host, in read order, and the gather's future,
    whose result is (unique (U,) host, inverse (R,) and rows (U, d) on the device, CUDA event
    or None). `thread` is the id of the thread that gathered (tests: not the caller's)."""

    ids: torch.Tensor
    future: Future = field(default_factory=Future)
    thread: int | None = None

    def wait(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        unique, inverse, rows, event = self.future.result()
        if event is not None:  # the copy ran on a side stream: order it before this one
            stream = torch.cuda.current_stream(rows.device)
            stream.wait_event(event)
            rows.record_stream(stream)
            inverse.record_stream(stream)
        return unique, inverse, rows


class _PrefetchedBag(torch.autograd.Function):
    """out = bag of the prefetched rows (= weight[unique]); backward: the table's gradient of the
    ordinary read (module docstring), dense or row-sparse, on the weight's device."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, per_read: torch.Tensor,  # type: ignore[override]
                rows: torch.Tensor, inverse_bags: torch.Tensor, bags: torch.Tensor,
                unique: torch.Tensor, sparse: bool) -> torch.Tensor:
        # weight (N, d) host; per_read, inverse_bags (n, r) and rows (U, d) on the device;
        # bags (n, r) and unique (U,) host -> (n, d) on the device
        ctx.save_for_backward(per_read, rows, inverse_bags, bags, unique)
        ctx.sparse, ctx.num_rows, ctx.host = sparse, weight.shape[0], weight.device
        return F.embedding_bag(inverse_bags, rows, mode="sum", per_sample_weights=per_read)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        per_read, rows, inverse_bags, bags, unique = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        need_weight, need_reads = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_weight = grad_reads = None
        if ctx.sparse and rows.device == ctx.host:  # _RowSparseBag's backward, compact rows
            if need_reads:
                grad_reads = read_weight_grad(rows, inverse_bags, grad_out).to(per_read.dtype)
            if need_weight:
                grad_weight = row_sparse_grad(grad_out, bags, per_read, ctx.num_rows)
                grad_weight = grad_weight.to(rows.dtype)
            return grad_weight, grad_reads, None, None, None, None, None
        with torch.enable_grad():  # ATen's embedding-bag backward on the compact rows
            leaves = (rows.detach().requires_grad_(need_weight),
                      per_read.detach().requires_grad_(need_reads))
            out = F.embedding_bag(inverse_bags, leaves[0], mode="sum",
                                  per_sample_weights=leaves[1])
            wanted = [leaf for leaf in leaves if leaf.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad_out))
        grad_rows = next(grads).to(ctx.host) if need_weight else None  # (U, d)
        grad_reads = next(grads) if need_reads else None
        if grad_rows is not None and ctx.sparse:
            grad_weight = torch.sparse_coo_tensor(
                unique.unsqueeze(0), grad_rows, (ctx.num_rows, rows.shape[1]),
                is_coalesced=True, check_invariants=False)  # (N, d), U rows
        elif grad_rows is not None:
            grad_weight = grad_rows.new_zeros(ctx.num_rows, rows.shape[1])
            grad_weight.index_copy_(0, unique, grad_rows)  # (N, d)
        return grad_weight, grad_reads, None, None, None, None, None


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
        self._pending: PrefetchedRows | None = None  # set by `use_prefetched` for one read
        self._copy_streams: dict[torch.device, object] = {}  # device -> side CUDA stream
        # prefetches started / read from / dropped unread or not matching; seconds the thread
        # spent gathering (host side) and that the reads waited for it
        self.prefetches = self.prefetch_hits = self.prefetch_misses = 0
        self.prefetch_gather_s = self.prefetch_wait_s = 0.0
        # warms (`warm`) submitted, pages asked for, seconds the warm thread spent asking
        self.warms = self.warm_pages = 0
        self.warm_s = 0.0
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

    def prefetch(self, ids: torch.Tensor, device: torch.device | str = "cpu") -> PrefetchedRows:
        """Start gathering the rows `ids` (any shape; the order of a later read's indices) on
        the background thread, for a read whose bag runs on `device`."""
        handle = PrefetchedRows(ids.detach().reshape(-1).to(self.weight.device))  # (R,)
        handle.future = prefetch_pool().submit(self._gather_rows, handle, torch.device(device))
        self.prefetches += 1
        return handle

    def _gather_rows(self, handle: PrefetchedRows, device: torch.device):
        """On the background thread: distinct rows, gathered (and copied to a GPU)."""
        handle.thread = threading.get_ident()
        started = time.perf_counter()
        unique, inverse = torch.unique(handle.ids, return_inverse=True)  # (U,), (R,)
        weight = self.weight.detach()
        if device.type != "cuda":
            rows = weight.index_select(0, unique)  # (U, d): a cold table's page faults
            self.prefetch_gather_s += time.perf_counter() - started
            return unique, inverse.to(device), rows.to(device), None
        rows = torch.empty(unique.shape[0], weight.shape[1], dtype=weight.dtype,
                           pin_memory=True)  # (U, d)
        torch.index_select(weight, 0, unique, out=rows)
        self.prefetch_gather_s += time.perf_counter() - started
        stream = self._copy_streams.get(device)
        if stream is None:
            stream = self._copy_streams[device] = torch.cuda.Stream(device)
        with torch.cuda.stream(stream):
            rows_device = rows.to(device, non_blocking=True)
            inverse_device = inverse.to(device, non_blocking=True)
            event = stream.record_event()
        return unique, inverse_device, rows_device, event

    def warm(self, ids: torch.Tensor) -> Future | None:
        """A mapped table: start reading the pages of the rows `ids` (any shape) into the page
        cache on the warm thread (`page_advice.will_need`), a step ahead of the read that needs
        them (`MemoryHost.warm_tables`). Page-cache advice only: the values read later are the
        file's at that time. A table in host memory has nothing to warm: None."""
        if self.storage != "mmap":
            return None
        rows = torch.unique(ids.detach().reshape(-1).to(self.weight.device))  # (U,)
        self.warms += 1
        return warm_pool().submit(self._ask_for_pages, rows)

    def _ask_for_pages(self, rows: torch.Tensor) -> int:
        started = time.perf_counter()
        pages = will_need(self.weight.detach(), rows)
        self.warm_s += time.perf_counter() - started
        self.warm_pages += pages
        return pages

    @contextlib.contextmanager
    def use_prefetched(self, handle: PrefetchedRows | None) -> Iterator[None]:
        """Within the block, the next read whose ids are `handle`'s bags its prefetched rows."""
        self._pending = handle
        try:
            yield
        finally:
            if self._pending is not None:  # not read: let the thread finish, drop the rows
                self.prefetch_misses += 1
                self._pending = None

    def _take_prefetched(self, indices: torch.Tensor) -> PrefetchedRows | None:
        handle, self._pending = self._pending, None
        if handle is None:
            return None
        same = handle.ids.numel() == indices.numel() and (
            indices.device != handle.ids.device  # no equality check that syncs a GPU
            or torch.equal(indices.reshape(-1), handle.ids))
        if not same:
            self.prefetch_misses += 1
            return None
        return handle

    def _read_prefetched(self, handle: PrefetchedRows, indices: torch.Tensor,
                         weights: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        unique, inverse, rows = handle.wait()  # (U,), (R,), (U, d)
        self.prefetch_wait_s += time.perf_counter() - started
        self.prefetch_hits += 1
        lead, reads = indices.shape[:-2], indices.shape[-2] * indices.shape[-1]
        inverse_bags = inverse.view(-1, reads)  # (B*T, H*k) positions among the unique rows
        per_read = weights.reshape(inverse_bags.shape).to(rows.device, self.weight.dtype)
        if self.weight.requires_grad and torch.is_grad_enabled():
            out = _PrefetchedBag.apply(self.weight, per_read, rows, inverse_bags,
                                       handle.ids.view(-1, reads), unique, self.sparse)
        else:
            out = F.embedding_bag(inverse_bags, rows, mode="sum", per_sample_weights=per_read)
        out = out.to(torch.promote_types(out.dtype, weights.dtype))
        return out.view(*lead, rows.shape[1]).to(weights.device, weights.dtype)  # (B, T, d_v)

    def read(self, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """indices, weights (B, T, H, k) on any device -> (B, T, d_v) on the device and in the
        dtype of `weights`, bagged on the host (or from prefetched rows: `use_prefetched`)."""
        handle = self._take_prefetched(indices)
        if handle is not None:
            return self._read_prefetched(handle, indices, weights)
        host = self.weight.device
        rows = super().read(indices.to(host), weights.to(host))  # (B, T, d_v) on the host
        return rows.to(weights.device, weights.dtype)
