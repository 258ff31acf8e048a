"""Reuse freed CPU memory inside the process instead of returning it to the OS (glibc malloc).

Part of the "capacity without latency" performance work (docs/performance.md): the row-sparse
training step of a large external memory must not pay for its temporaries twice.

A memory step allocates a few tensors of hundreds of MB per step (the row-sparse gradient of a
1M-slot table, its optimizer buffers). glibc serves every block above its mmap threshold (at
most 32 MiB) with a fresh `mmap` and unmaps it on free, so each step pays the page faults of
all those pages again: on this machine filling a fresh 400 MB tensor takes ~120 ms, filling a
reused one ~12 ms (docs/performance.md). `reuse_freed_memory` sets `M_MMAP_MAX = 0` (large
blocks come from the heap) and a high `M_TRIM_THRESHOLD` (freed heap is kept for reuse): the
effect PyTorch's CPU tuning guide gets by preloading jemalloc or tcmalloc. The cost is that the
process keeps its peak heap; `release_free_memory` (`malloc_trim(0)`) hands free pages back.
The `extmem` CLI enables it at start (set `EXTMEM_MALLOC_REUSE=0` to opt out); library users
can call it themselves. A no-op (returns False) where glibc is not the allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameter ids (malloc.h)
_M_MMAP_MAX = -4
_KEEP_BYTES = 2**31 - 1  # trim threshold (an int in mallopt): keep up to 2 GiB free at the top
ENV_SWITCH = "EXTMEM_MALLOC_REUSE"


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


def reuse_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed memory; True when glibc accepted it."""
    libc = _libc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES) == 1


def release_free_memory() -> bool:
    """Return free heap pages to the OS (`malloc_trim(0)`); True when some were released."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))


def enabled_by_environment() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")
