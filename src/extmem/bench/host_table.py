"""`extmem bench host-table`: resident memory of a memory-mapped host value table.

Builds an mmap `HostValueTable` (`extmem.memory.host_table`; default 4,194,304 rows x 256 fp32
= a 4 GiB file) in `dir` (default: a fresh temporary directory under $TMPDIR or /tmp), performs
`reads` reads of `tokens` tokens x `per_token` random rows each and reports: the file size, the
process's resident set (VmRSS, and RssFile = pages of mapped files) before the build, after it
and after the reads, the table bytes made resident by the reads (RssFile growth), the bytes of
the distinct pages the reads touch (what that growth should be), the build time and the read
latencies. The file is deleted at the end. Linux only (/proc/self/status).

The build writes the file through the page cache, so right after it the whole table is cached
and a read fault maps the cached folio (and fault-around neighbours) that holds the row, which
can be much larger than a page. `cold = true` flushes the file and drops it from the page cache
before the reads, so rows come from disk (with the kernel's readahead) and residency follows
the rows read more closely. A $TMPDIR on tmpfs keeps the file in shared memory, not in mapped
file pages: point `dir` at a disk.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from extmem.bench.markdown import command_lines, environment_line
from extmem.bench.timing import (
    environment,
    finish_environment,
    log_progress,
    proc_status_bytes,
    summarize,
    time_ms,
)
from extmem.config import require, require_valid_fields
from extmem.errors import ConfigError
from extmem.memory.host_table import HostValueTable

STATUS_FIELDS = ("VmRSS", "RssFile")


@dataclass
class HostTableBenchConfig:
    rows: int = 4_194_304       # table rows N
    dim: int = 256              # row width d (fp32)
    reads: int = 20             # reads (steps) to time
    tokens: int = 4096          # tokens per read
    per_token: int = 32         # random rows per token
    dir: str = ""               # directory of the table file ("": a fresh temporary directory)
    cold: bool = False          # flush the file and drop it from the page cache before reading
    seed: int = 0

    def __post_init__(self) -> None:
        p = "bench.host-table"
        require_valid_fields(self, p)
        for name, low in {"rows": 1, "dim": 1, "reads": 1, "tokens": 1, "per_token": 1,
                          "seed": 0}.items():
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool),
                    f"{p}.{name}: expected an integer, got {value!r}")
            require(value >= low, f"{p}.{name}: {value} must be >= {low}")
        require(isinstance(self.dir, str), f"{p}.dir: expected a string, got {self.dir!r}")
        require(not self.dir or not Path(self.dir).exists() or Path(self.dir).is_dir(),
                f"{p}.dir: {self.dir!r} exists and is not a directory")


def mark_pages(touched: torch.Tensor, rows: torch.Tensor, row_bytes: int, page: int) -> None:
    """Set touched[p] for every file page p (of `page` bytes) holding a byte of `rows` (R,)."""
    first = rows * row_bytes // page  # (R,)
    last = ((rows + 1) * row_bytes - 1) // page  # (R,)
    span = torch.arange(-(-row_bytes // page) + 1)  # most pages one row can straddle
    touched[torch.minimum(first[:, None] + span, last[:, None]).reshape(-1)] = True


def drop_from_page_cache(path: Path) -> None:
    """Write the file's dirty pages to disk, then evict its (unmapped) pages from the cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _resident() -> dict[str, int]:
    fields = proc_status_bytes(*STATUS_FIELDS)
    if set(fields) != set(STATUS_FIELDS):
        raise ConfigError("bench host-table: needs VmRSS and RssFile from /proc/self/status "
                          "(Linux) to measure residency")
    return fields


def run_host_table_bench(cfg: HostTableBenchConfig, progress: bool = True) -> dict:
    """Build the mapped table, read from it, report residency and timings (JSON-serialisable)."""
    started = time.perf_counter()
    env = environment()
    torch.manual_seed(cfg.seed)
    directory = Path(cfg.dir) if cfg.dir else Path(tempfile.mkdtemp(prefix="extmem-rss-"))
    path = directory / f"host-table-{os.getpid()}.bin"
    page, row_bytes = os.sysconf("SC_PAGE_SIZE"), cfg.dim * 4
    before = _resident()
    log_progress(progress, f"bench host-table: building {cfg.rows:,} x {cfg.dim} fp32 in {path}")
    built_tables: list[HostValueTable] = []
    build_ms = time_ms(lambda: built_tables.append(
        HostValueTable(cfg.rows, cfg.dim, storage="mmap", file=str(path))))
    table = built_tables.pop()
    try:
        if cfg.cold:
            drop_from_page_cache(path)
        built = _resident()
        touched = torch.zeros(-(-cfg.rows * row_bytes // page), dtype=torch.bool)  # (pages,)
        read_ms = []
        log_progress(progress, f"bench host-table: {cfg.reads} reads")
        with torch.no_grad():
            for _ in range(cfg.reads):
                indices = torch.randint(0, cfg.rows, (1, cfg.tokens, 1, cfg.per_token))
                weights = torch.rand(indices.shape)  # (B, T, H, k)
                read_ms.append(time_ms(functools.partial(table.read, indices, weights)))
                mark_pages(touched, indices.reshape(-1), row_bytes, page)
        after = _resident()
        file_bytes = path.stat().st_size
    finally:
        del table
        path.unlink(missing_ok=True)
        if not cfg.dir:
            directory.rmdir()
    finish_environment(env)
    return {
        "benchmark": "host-table", "config": asdict(cfg), "environment": env,
        "file_bytes": file_bytes, "page_bytes": page, "build_s": round(build_ms / 1000, 2),
        "rss_before_bytes": before["VmRSS"], "rss_after_build_bytes": built["VmRSS"],
        "rss_after_reads_bytes": after["VmRSS"],
        "rss_file_after_build_bytes": built["RssFile"],
        "rss_file_after_reads_bytes": after["RssFile"],
        "table_resident_bytes": after["RssFile"] - built["RssFile"],
        "touched_pages_bytes": int(touched.sum()) * page,
        "first_read_ms": round(read_ms[0], 2), "read_ms": summarize(read_ms),
        "wall_s": round(time.perf_counter() - started, 2),
    }


# --------------------------------------------------------------------------- Markdown report


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def render_markdown(result: dict, command: str) -> str:
    """The `## host-table` section for one result of `run_host_table_bench`."""
    cfg, env = result["config"], result["environment"]
    reads = result["read_ms"]
    lines = [
        "## host-table", "",
        f"Resident memory of a memory-mapped host value table ({cfg['rows']:,} x {cfg['dim']} "
        f"fp32, a {result['file_bytes'] / 2**30:.2f} GiB file"
        + (", dropped from the page cache before the reads" if cfg["cold"] else "")
        + f") after {cfg['reads']} reads of {cfg['tokens']:,} tokens x {cfg['per_token']} "
        "random rows: the table bytes the reads made resident (RssFile growth) against the "
        "bytes of the distinct pages they touch.", "",
        *command_lines(command),
        environment_line(result) + f" Platform: {env['platform']}.", "",
        "| measure | value |", "|---|---|",
        f"| build time | {result['build_s']} s |",
        f"| VmRSS before build / after build / after reads | {_mb(result['rss_before_bytes'])}"
        f" / {_mb(result['rss_after_build_bytes'])} / {_mb(result['rss_after_reads_bytes'])} |",
        f"| table resident after the reads (RssFile growth) | "
        f"{_mb(result['table_resident_bytes'])} |",
        f"| distinct pages the reads touch | {_mb(result['touched_pages_bytes'])} |",
        f"| read ms: first / median / min | {result['first_read_ms']:.1f} / "
        f"{reads['median']:.1f} / {reads['min']:.1f} |",
    ]
    return "\n".join(lines) + "\n"


def summary(result: dict) -> str:
    return (f"table {result['file_bytes'] / 2**30:.2f} GiB: {_mb(result['table_resident_bytes'])}"
            f" resident after the reads ({_mb(result['touched_pages_bytes'])} of pages touched);"
            f" read {result['read_ms']['median']:.1f} ms median, first "
            f"{result['first_read_ms']:.1f} ms; build {result['build_s']} s")
