"""Reading a memory-mapped value table's rows into the page cache ahead of use (Linux
`madvise(MADV_WILLNEED)`), for `HostValueTable.warm`.

Engram (Cheng et al. 2026, "Conditional Memory via Scalable Lookup", arXiv 2601.07372) fetches
its table rows before the layer that reads them, because its row ids depend on the token ids
only. When the table is a file larger than the page cache can hold warm, the cost of a step's
rows is disk reads, one page fault at a time, and a step's forward is far too short to hide
them (docs/performance.md, "Prefetching host and mmap tables"). The next training step's
tokens are known a step early (batches depend on (seed, step) only), so its rows' pages can be
requested while the current step computes: `will_need` asks the kernel to read the pages of
the given rows (MADV_WILLNEED: the reads are queued together, not one fault at a time) without
mapping them or copying anything. It is advice about the page cache only: the values a later
read sees are whatever the file holds then, so an optimizer step in between changes nothing.

Where `madvise` is not available (not Linux, no libc) `will_need` does nothing and says so
(returns 0): correctness never depends on it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable

import torch

MADV_WILLNEED = 3  # <sys/mman.h> on Linux
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    """libc's madvise(addr, length, advice) -> 0 | -1, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    call.restype = ctypes.c_int
    return call


def page_runs(weight: torch.Tensor, rows: torch.Tensor) -> list[tuple[int, int]]:
    """(first page address, pages) of every run of consecutive pages that holds the `rows`
    (R,) of the contiguous (N, d) `weight`, in address order; a row may span pages."""
    if rows.numel() == 0:
        return []
    row_bytes = weight.shape[1] * weight.element_size()
    starts = weight.data_ptr() + rows.to(torch.int64) * row_bytes  # (R,) byte addresses
    first, last = starts // PAGE_BYTES, (starts + row_bytes - 1) // PAGE_BYTES  # (R,) each
    span = torch.arange(int((last - first).max()) + 1)  # (S,) most pages a row covers
    covered = first[:, None] + span  # (R, S)
    pages = torch.unique(covered[covered <= last[:, None]])  # (P,) sorted
    new_run = torch.ones_like(pages, dtype=torch.bool)  # (P,)
    new_run[1:] = pages[1:] != pages[:-1] + 1
    lengths = torch.bincount(new_run.cumsum(0) - 1)  # (runs,)
    return [(page * PAGE_BYTES, count)
            for page, count in zip(pages[new_run].tolist(), lengths.tolist(), strict=True)]


def will_need(weight: torch.Tensor, rows: torch.Tensor) -> int:
    """Ask the kernel to read the pages holding `rows` (R,) of the mapped (N, d) `weight` into
    the page cache; returns the number of pages asked for (0 where madvise is unavailable)."""
    if not weight.is_contiguous():
        raise ValueError("will_need: the table's weight must be contiguous (N, d)")
    call = _madvise()
    if call is None:
        return 0
    asked = 0
    for address, count in page_runs(weight, rows):
        if call(address, count * PAGE_BYTES, MADV_WILLNEED) == 0:
            asked += count
    return asked
