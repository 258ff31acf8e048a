"""Resident memory of a memory-mapped host value table (`extmem.memory.host_table`).

Builds an mmap `HostValueTable` (default 4,194,304 rows x 256 fp32 = a 4 GiB file) in --dir,
performs --reads reads of --tokens tokens x --per-token random rows each, and prints JSON:
the file size, the process's resident set (VmRSS, and RssFile = pages of mapped files) before
the build, after it and after the reads, the table bytes made resident by the reads (RssFile
growth), the bytes of the distinct pages the reads touch (what that growth should be), the
build time and the read latency. The file is deleted at the end.

The build writes the file through the page cache, so right after it the whole table is cached
and a read fault maps the cached folio (and fault-around neighbours) that holds the row, which
can be much larger than a page. --cold flushes the file and drops it from the page cache before
the reads, so rows come from disk (with the kernel's readahead) and residency follows the rows
read more closely.

    python benchmarks/host_table_rss.py --rows 1048576 --dim 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from extmem.memory.host_table import HostValueTable

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> dict[str, int]:
    """VmRSS and RssFile of this process, in bytes (from /proc/self/status)."""
    fields = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssFile"):
                fields[name] = int(value.split()[0]) * 1024  # reported in kB
    return fields


def mark_pages(touched: torch.Tensor, rows: torch.Tensor, row_bytes: int) -> None:
    """Set touched[p] for every file page p that holds a byte of one of `rows` (R,)."""
    first = rows * row_bytes // PAGE_BYTES  # (R,)
    last = ((rows + 1) * row_bytes - 1) // PAGE_BYTES  # (R,)
    span = torch.arange(-(-row_bytes // PAGE_BYTES) + 1)  # most pages one row can straddle
    touched[torch.minimum(first[:, None] + span, last[:, None]).reshape(-1)] = True


def drop_from_page_cache(path: Path) -> None:
    """Write the file's dirty pages to disk, then evict its (unmapped) pages from the cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4_194_304, help="table rows N")
    parser.add_argument("--dim", type=int, default=256, help="row width d (fp32)")
    parser.add_argument("--reads", type=int, default=20, help="reads (steps) to time")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per read")
    parser.add_argument("--per-token", type=int, default=32, help="random rows per token")
    parser.add_argument("--dir", default="", help="directory of the table file (default: a "
                        "fresh temporary directory under $TMPDIR or /tmp)")
    parser.add_argument("--cold", action="store_true",
                        help="flush the file and drop it from the page cache before the reads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    directory = Path(args.dir or tempfile.mkdtemp(prefix="extmem-rss-"))
    path = directory / f"host-table-{os.getpid()}.bin"
    row_bytes = args.dim * 4
    before = resident_bytes()
    start = time.perf_counter()
    table = HostValueTable(args.rows, args.dim, storage="mmap", file=str(path))
    build_s = time.perf_counter() - start
    try:
        if args.cold:
            drop_from_page_cache(path)
        built = resident_bytes()
        touched = torch.zeros(-(-args.rows * row_bytes // PAGE_BYTES), dtype=torch.bool)
        latencies_ms = []
        with torch.no_grad():
            for _ in range(args.reads):
                indices = torch.randint(0, args.rows, (1, args.tokens, 1, args.per_token))
                weights = torch.rand(indices.shape)  # (B, T, H, k)
                start = time.perf_counter()
                table.read(indices, weights)  # (B, T, d)
                latencies_ms.append((time.perf_counter() - start) * 1e3)
                mark_pages(touched, indices.reshape(-1), row_bytes)
        after = resident_bytes()
        file_bytes = path.stat().st_size
    finally:
        del table
        path.unlink()
        if not args.dir:
            directory.rmdir()
    print(json.dumps({
        "rows": args.rows, "dim": args.dim, "reads": args.reads, "tokens": args.tokens,
        "rows_per_token": args.per_token, "cold": args.cold, "file_bytes": file_bytes,
        "build_s": round(build_s, 2),
        "rss_before_bytes": before["VmRSS"], "rss_after_build_bytes": built["VmRSS"],
        "rss_after_reads_bytes": after["VmRSS"],
        "rss_file_after_build_bytes": built["RssFile"],
        "rss_file_after_reads_bytes": after["RssFile"],
        "table_resident_bytes": after["RssFile"] - built["RssFile"],
        "touched_pages_bytes": int(touched.sum()) * PAGE_BYTES,
        "read_ms_mean": round(statistics.mean(latencies_ms), 2),
        "read_ms_median": round(statistics.median(latencies_ms), 2),
    }, indent=2))


if __name__ == "__main__":
    main()
