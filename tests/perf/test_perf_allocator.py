"""extmem.allocator: large CPU blocks come from the reusable heap, not fresh mmaps (glibc)."""

from __future__ import annotations

import ctypes

import pytest
import torch

from extmem import allocator


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _mmapped_bytes() -> int:
    libc = allocator._libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc >= 2.33 (mallinfo2) is needed to observe the allocator")
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2().hblkhd  # bytes held in mmapped blocks


def test_large_tensors_are_served_from_the_heap_after_reuse_freed_memory() -> None:
    before = _mmapped_bytes()
    assert allocator.reuse_freed_memory()
    block = torch.empty(96 << 20, dtype=torch.uint8)  # 96 MiB: above glibc's mmap threshold
    block.fill_(1)
    assert _mmapped_bytes() <= before  # no new mmapped block for it
    del block
    allocator.release_free_memory()  # hands the freed heap back; must not fail


def test_environment_switch(monkeypatch) -> None:
    monkeypatch.delenv(allocator.ENV_SWITCH, raising=False)
    assert allocator.enabled_by_environment()
    for off in ("0", "false", "off"):
        monkeypatch.setenv(allocator.ENV_SWITCH, off)
        assert not allocator.enabled_by_environment()
