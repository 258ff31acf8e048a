"""`extmem bench engram-prefetch`: training step time of an Engram model whose table is a
memory-mapped file, with and without prefetching its rows (`memory.prefetch`).

Engram (Cheng et al. 2026, "Conditional Memory via Scalable Lookup", DeepSeek, arXiv
2601.07372) keeps its tables off the accelerator and, because its row ids depend on the token
ids only, fetches the rows a step needs while the layers before the memory run. This benchmark
measures how much of the cost of a table that is not in memory that hides. The model is
configs/design/engram.toml's (d = 128, 4 layers, the memory at layer 1: orders 2 and 3, 8 heads,
rows 8 wide, gate and convolution) with each head's table grown so that the 16 tables fill a
`table_gib` file (default 6 GiB). Three subjects, same weights and batches:

- memory: the table in memory (`table_storage = "device"`, on the CPU), `memory_gib` large
  (0 = as large as the file; smaller where RAM cannot hold it beside the file's page cache:
  random rows cost about as much from a smaller table once it is past the CPU caches);
- mmap: the table in the mapped file (`table_storage = "mmap"`), read in the layer;
- mmap_prefetch: the same model and file with `prefetch` on, as the trainer runs it: the
  step's rows are gathered on a background thread from the start of the forward, and the next
  step's pages are requested while this step runs (`MemoryHost.warm_tables`, page-cache advice).

Each step is a forward, next-token cross-entropy and backward (row-sparse table gradient by
default, so no table-sized gradient; no optimizer step, so the file stays clean), on fresh
random batches, in chains of `chain` timed steps per subject after one untimed step (which
has no step before it to ask for its pages). With `cold` (default) the file's pages are
dropped before every mmap step (untimed): `madvise(MADV_DONTNEED)` unmaps them from this
process, then `posix_fadvise(POSIX_FADV_DONTNEED)` evicts them from the page cache (no root
needed), so the rows come from disk, as with a table larger than the page cache can hold;
only the pages that mmap_prefetch asked for during the step before are kept. Its timed step
lasts until all those pages have arrived in the page cache (mincore; or none has for 20 ms:
the kernel may drop readahead it cannot queue), so requests the step's own work does not
cover count against it (in training the next step's first layers would still
overlap them: the figure is conservative). Put `dir` on a disk: a tmpfs file has no page
cache to drop. Chains interleave the subjects, in an order reversed every other round.
Reported: step median / min, the gather time of the background thread and the time the
layer waited for it, the pages requested per step, and the fraction of the mmap overhead
hidden, (t_mmap - t_prefetch) / (t_mmap - t_memory), medians; the aim is >= 0.8
(docs/performance.md, "Prefetching host and mmap tables").
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from extmem.bench.host_table import drop_from_page_cache
from extmem.bench.markdown import command_lines, environment_line
from extmem.bench.timing import (
    environment,
    finish_environment,
    log_progress,
    proc_status_bytes,
    summarize,
    time_ms,
    torch_threads,
)
from extmem.config import require, require_valid_fields
from extmem.memory import EngramConfig, MemoryConfig
from extmem.memory.host_table import HostValueTable, warm_pool
from extmem.memory.page_advice import PAGE_BYTES, page_runs
from extmem.model.config import ModelConfig
from extmem.model.transformer import Transformer

ORDERS = [2, 3]
SUBJECTS = ("memory", "mmap", "mmap_prefetch")
GIB = 2 ** 30


@dataclass
class EngramPrefetchBenchConfig:
    table_gib: float = 6.0     # size of the mapped table file
    memory_gib: float = 0.0    # size of the in-memory table (0 = table_gib)
    value_dim: int = 8         # each head's row width (design/engram)
    heads: int = 8             # hash heads per order (orders 2 and 3)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    layer: int = 1             # the memory's layer: layers before it overlap the prefetch
    vocab_size: int = 512
    batch_size: int = 32
    seq_len: int = 64
    steps: int = 10            # timed steps per subject (chains interleaved over rounds)
    chain: int = 5             # timed steps in a row per subject, after one untimed step
    warmup: int = 1            # untimed chains of one step per subject first
    cold: bool = True          # drop the file's pages before every mmap step
    sparse_updates: bool = True
    threads: int = 0           # torch intra-op threads (0: leave torch's setting)
    dir: str = ""              # directory of the table file ("": a fresh temporary directory)
    seed: int = 0

    def __post_init__(self) -> None:
        p = "bench.engram-prefetch"
        require_valid_fields(self, p)
        for name, low in {"value_dim": 1, "heads": 1, "d_model": 1, "n_layers": 1, "n_heads": 1,
                          "layer": 0, "vocab_size": 2, "batch_size": 1, "seq_len": 1,
                          "steps": 1, "chain": 1, "warmup": 0, "threads": 0,
                          "seed": 0}.items():
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool),
                    f"{p}.{name}: expected an integer, got {value!r}")
            require(value >= low, f"{p}.{name}: {value} must be >= {low}")
        require(self.layer < self.n_layers,
                f"{p}.layer: {self.layer} must be < n_layers={self.n_layers}")
        require(self.d_model % self.n_heads == 0 and (self.d_model // self.n_heads) % 2 == 0,
                f"{p}.d_model: {self.d_model} must split into n_heads={self.n_heads} even heads")
        for name in ("table_gib", "memory_gib"):
            value = getattr(self, name)
            require(isinstance(value, (int, float)) and not isinstance(value, bool),
                    f"{p}.{name}: expected a number, got {value!r}")
        require(self.memory_gib >= 0, f"{p}.memory_gib: {self.memory_gib} must be >= 0")
        least = 2 * self.tables * self.value_dim * 4 / GIB
        require(self.table_gib >= least and (not self.memory_gib or self.memory_gib >= least),
                f"{p}.table_gib: {self.table_gib} (memory_gib {self.memory_gib}) is too small "
                f"for {self.tables} tables of 2+ rows x {self.value_dim}; allowed >= {least:.2g}")
        require(isinstance(self.dir, str), f"{p}.dir: expected a string, got {self.dir!r}")
        require(not self.dir or not Path(self.dir).exists() or Path(self.dir).is_dir(),
                f"{p}.dir: {self.dir!r} exists and is not a directory")

    @property
    def tables(self) -> int:
        return len(ORDERS) * self.heads

    def rows_per_head(self, gib: float) -> int:
        return max(2, int(gib * GIB) // (self.tables * self.value_dim * 4))


def model_config(cfg: EngramPrefetchBenchConfig, storage: str, gib: float,
                 file: str = "") -> ModelConfig:
    engram = EngramConfig(orders=list(ORDERS), heads=cfg.heads,
                          rows_per_head=cfg.rows_per_head(gib))
    memory = MemoryConfig(layers=[cfg.layer], placement="input", lookup="engram",
                          readout="engram", value_dim=cfg.value_dim, engram=engram,
                          sparse_updates=cfg.sparse_updates, table_storage=storage,
                          table_file=file, prefetch=storage != "device")
    return ModelConfig(vocab_size=cfg.vocab_size, d_model=cfg.d_model, n_layers=cfg.n_layers,
                       n_heads=cfg.n_heads, ffn="swiglu", max_seq_len=cfg.seq_len,
                       memories=[memory])


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return libc


def unmap_pages(tensor: torch.Tensor) -> None:
    """madvise(MADV_DONTNEED) over a mapped tensor: this process drops its page-table entries
    (the file keeps its data), so fadvise can then evict the pages from the page cache."""
    start, size = tensor.data_ptr(), tensor.numel() * tensor.element_size()
    if start % PAGE_BYTES:
        raise ValueError("unmap_pages: the mapping does not start on a page boundary")
    _unmap(_libc(), start, -(-size // PAGE_BYTES) * PAGE_BYTES)


def _unmap(libc: ctypes.CDLL, address: int, length: int) -> None:
    if libc.madvise(address, length, getattr(mmap, "MADV_DONTNEED", 4)):
        raise OSError(ctypes.get_errno(), "madvise(MADV_DONTNEED) failed")


def resident_pages(tensor: torch.Tensor) -> torch.Tensor:
    """(pages,) bool: which pages of a mapped tensor's file are in the page cache (mincore)."""
    pages = -(-tensor.numel() * tensor.element_size() // PAGE_BYTES)
    vec = (ctypes.c_ubyte * pages)()
    if _libc().mincore(tensor.data_ptr(), pages * PAGE_BYTES, vec):
        raise OSError(ctypes.get_errno(), "mincore failed")
    return (torch.frombuffer(vec, dtype=torch.uint8) & 1).bool()


def cached_bytes(tensor: torch.Tensor) -> int:
    """Bytes of a mapped tensor's file pages that are in the page cache (mincore)."""
    return int(resident_pages(tensor).sum()) * PAGE_BYTES


class _Subject:
    def __init__(self, name: str, cfg: EngramPrefetchBenchConfig, file: Path | None) -> None:
        storage = "device" if file is None else "mmap"
        gib = (cfg.memory_gib or cfg.table_gib) if file is None else cfg.table_gib
        torch.manual_seed(cfg.seed)
        self.name, self.file = name, file
        self.model = Transformer(model_config(cfg, storage, gib, str(file or "")))
        self.memory = self.model.blocks[cfg.layer].memories[0]
        self.table_bytes = self.memory.table.weight.numel() * self.memory.table.weight.element_size()
        self.missing = 0  # pages asked for ahead that were not in the cache when a step ended

    def pages_of(self, ids: torch.Tensor) -> torch.Tensor:
        """(P,) indices, from the mapping's start, of the pages a step on ids (B, T + 1) reads."""
        weight = self.memory.table.weight.detach()
        rows = torch.unique(self.memory.lookup.row_ids(ids[:, :-1]))  # (U,)
        base = weight.data_ptr() // PAGE_BYTES
        return torch.cat([torch.arange(address // PAGE_BYTES, address // PAGE_BYTES + count)
                          for address, count in page_runs(weight, rows)]) - base

    def evict(self, keep: torch.Tensor | None = None) -> None:
        """Drop the file's pages from this process and the page cache, all of them or all but
        the pages `keep` (P,) (those warmed for the next step)."""
        if keep is None or keep.numel() == 0:
            unmap_pages(self.memory.table.weight)
            drop_from_page_cache(self.file)
            return
        weight = self.memory.table.weight
        total = -(-weight.numel() * weight.element_size() // PAGE_BYTES)
        bounds = torch.cat([torch.tensor([-1]), keep.sort().values, torch.tensor([total])])
        libc, fd = _libc(), os.open(self.file, os.O_RDONLY)
        try:
            for before, after in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
                if after - before > 1:  # the pages strictly between two kept ones
                    first, count = before + 1, after - before - 1
                    _unmap(libc, weight.data_ptr() + first * PAGE_BYTES, count * PAGE_BYTES)
                    os.posix_fadvise(fd, first * PAGE_BYTES, count * PAGE_BYTES,
                                     os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    def step(self, ids: torch.Tensor, ahead: torch.Tensor | None = None,
             ahead_pages: torch.Tensor | None = None) -> None:
        """One training step on ids (B, T + 1). With `ahead`, the next step's ids: their pages
        are requested first, as the trainer does (`MemoryHost.warm_tables`), and the step ends
        only when they are all in the page cache (`ahead_pages`), so a request still running
        when the step's own work is done counts against the step."""
        self.model.train()
        if ahead is not None:
            self.model.warm_tables(ahead[:, :-1])
        logits = self.model(ids[:, :-1])  # (B, T, V)
        F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
        self.model.zero_grad(set_to_none=True)
        if ahead is not None:
            warm_pool().submit(lambda: None).result()  # every request made
            if ahead_pages is not None:
                self._wait_resident(ahead_pages)

    def _wait_resident(self, pages: torch.Tensor, settle_s: float = 0.02) -> None:
        """Until every page of `pages` (P,) is in the page cache, or none has arrived for
        `settle_s` (the kernel may drop readahead it cannot queue: those pages are read when
        the next step faults on them, in its timed gather); `self.missing` counts them."""
        arrived, last_change = -1, time.perf_counter()
        while True:
            now = int(resident_pages(self.memory.table.weight)[pages].sum())
            if now == pages.numel():
                break
            if now != arrived:
                arrived, last_change = now, time.perf_counter()
            elif time.perf_counter() - last_change > settle_s:
                break
            time.sleep(0.002)
        self.missing += pages.numel() - now


def _counters(table) -> tuple[float, float, int, float, int, int]:
    """gather s, wait s, prefetched reads, warm s, pages requested, warms."""
    if not isinstance(table, HostValueTable):
        return 0.0, 0.0, 0, 0.0, 0, 0
    return (table.prefetch_gather_s, table.prefetch_wait_s, table.prefetch_hits,
            table.warm_s, table.warm_pages, table.warms)


def _timed_chains(subjects: dict[str, tuple[_Subject, bool]], chains: list[list[torch.Tensor]],
                  cold: bool) -> tuple[dict[str, list[float]], dict[str, dict[str, float]]]:
    """Step ms per subject over each chain's batches after its first (untimed), the chains
    interleaved over the subjects; and per prefetching subject the thread's gather, the
    layer's wait and the warm thread's page requests per timed step (means). With `cold`, before
    every step the file's pages are dropped (untimed), all but those a prefetching subject
    asked for during the step before."""
    samples: dict[str, list[float]] = {name: [] for name in subjects}
    totals = {name: [0.0] * 6 for name in subjects}
    missing = dict.fromkeys(subjects, 0)  # pages asked for, not in the cache at the step's end
    names = list(subjects)
    for r, chain in enumerate(chains):
        for name in names if r % 2 == 0 else names[::-1]:
            subject, prefetch = subjects[name]
            subject.memory.prefetch = prefetch
            mapped = cold and subject.file is not None
            kept = None  # the pages asked for during the step before
            for i, ids in enumerate(chain):
                if mapped:
                    subject.evict(kept)
                ahead = chain[i + 1] if prefetch and i + 1 < len(chain) else None
                kept = subject.pages_of(ahead) if ahead is not None and mapped else None
                before, missed = _counters(subject.memory.table), subject.missing
                took = time_ms(functools.partial(subject.step, ids, ahead, kept))
                if not i:  # the first step had no step before it to ask for its pages
                    continue
                samples[name].append(took)
                after = _counters(subject.memory.table)
                for k, (a, b) in enumerate(zip(after, before, strict=True)):
                    totals[name][k] += a - b
                missing[name] += subject.missing - missed
    return samples, {name: {"gather_ms": round(1000 * gather / hits, 2),
                            "wait_ms": round(1000 * wait / hits, 2),
                            "warm_ms": round(1000 * warm / warms, 2) if warms else 0.0,
                            "pages_per_warm": round(pages / warms) if warms else 0,
                            "pages_missing_per_warm": round(missing[name] / warms) if warms
                            else 0}
                     for name, (gather, wait, hits, warm, pages, warms) in totals.items()
                     if hits}


def run_engram_prefetch_bench(cfg: EngramPrefetchBenchConfig, progress: bool = True) -> dict:
    started = time.perf_counter()
    env = environment()
    directory = Path(cfg.dir) if cfg.dir else Path(tempfile.mkdtemp(prefix="extmem-prefetch-"))
    path = directory / f"engram-prefetch-{os.getpid()}.bin"
    generator = torch.Generator().manual_seed(cfg.seed)

    def batches(n: int) -> list[torch.Tensor]:  # n fresh random batches, each (B, T + 1)
        return [torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.seq_len + 1),
                              generator=generator) for _ in range(n)]

    warmup = [batches(2) for _ in range(cfg.warmup)]
    lengths = [min(cfg.chain, cfg.steps - start) for start in range(0, cfg.steps, cfg.chain)]
    chains = [batches(1 + n) for n in lengths]  # each: an untimed step, then n timed
    with torch_threads(cfg.threads):
        log_progress(progress, f"bench engram-prefetch: building the in-memory table and a "
                               f"{cfg.table_gib:g} GiB mapped table in {path}")
        memory = _Subject("memory", cfg, None)
        mapped = _Subject("mmap", cfg, path)
        subjects = {"memory": (memory, False), "mmap": (mapped, False),
                    "mmap_prefetch": (mapped, True)}
        try:
            log_progress(progress, f"bench engram-prefetch: {cfg.warmup} warmup + "
                                   f"{len(chains)} interleaved rounds of up to {cfg.chain} "
                                   "timed steps per subject")
            _timed_chains(subjects, warmup, cfg.cold)
            weight = mapped.memory.table.weight
            drop = {"rss_file_bytes": [proc_status_bytes("RssFile").get("RssFile", 0)],
                    "cached_bytes": [cached_bytes(weight)]}
            mapped.evict()  # what one drop does (the timed steps start from it with `cold`)
            drop["rss_file_bytes"].append(proc_status_bytes("RssFile").get("RssFile", 0))
            drop["cached_bytes"].append(cached_bytes(weight))
            samples, prefetch_ms = _timed_chains(subjects, chains, cfg.cold)
            file_bytes = path.stat().st_size
        finally:
            del mapped, subjects
            path.unlink(missing_ok=True)
            if not cfg.dir:
                directory.rmdir()
    steps = {name: summarize(values) for name, values in samples.items()}
    t = {name: statistics.median(values) for name, values in samples.items()}
    overhead = t["mmap"] - t["memory"]
    hidden = (t["mmap"] - t["mmap_prefetch"]) / overhead if overhead > 0 else None
    finish_environment(env)
    return {
        "benchmark": "engram-prefetch", "config": asdict(cfg), "environment": env,
        "file_bytes": file_bytes, "memory_table_bytes": memory.table_bytes,
        "rows_per_head": cfg.rows_per_head(cfg.table_gib),
        "drop_before_after": drop, "tokens_per_step": cfg.batch_size * cfg.seq_len,
        "step_ms": steps, "prefetch_ms": prefetch_ms,
        "mmap_overhead_ms": round(overhead, 2),
        "hidden_fraction": None if hidden is None else round(hidden, 3),
        "wall_s": round(time.perf_counter() - started, 2),
    }


# --------------------------------------------------------------------------- Markdown report


def render_markdown(result: dict, command: str) -> str:
    """The `## engram-prefetch` section for one result of `run_engram_prefetch_bench`."""
    cfg, steps = result["config"], result["step_ms"]
    hidden = result["hidden_fraction"]
    lines = [
        "## engram-prefetch", "",
        f"Training step (forward, cross-entropy, backward; no optimizer step) of the Engram "
        f"design model (d={cfg['d_model']}, {cfg['n_layers']} layers, the memory at layer "
        f"{cfg['layer']}: orders 2 and 3 x {cfg['heads']} heads, rows {cfg['value_dim']} wide"
        f", {'row-sparse' if cfg['sparse_updates'] else 'dense'} table gradient), batch "
        f"{cfg['batch_size']} x {cfg['seq_len']} tokens, with its table in memory "
        f"({result['memory_table_bytes'] / GIB:.2f} GiB), in a "
        f"{result['file_bytes'] / GIB:.2f} GiB memory-mapped file read in the layer, and in "
        "that file with `memory.prefetch` (the step's rows gathered on a background thread from "
        "the start of the forward, and the next step's pages requested while it runs, as in "
        "training)"
        + ("; the file's pages are dropped before every mmap step, all but those the "
           "prefetching step before asked for, whose step ends only when they have all arrived in "
           "the page cache (or none has for 20 ms)" if cfg["cold"] else "")
        + f". Median / min over {cfg['steps']} timed steps per subject after {cfg['warmup']} "
        "warmup.", "",
        *command_lines(command),
        environment_line(result), "",
        "| table | step ms median / min | prefetch gather / wait ms per step | pages requested "
        "ahead per step (ms; not arrived by the step's end) |",
        "|---|---|---|---|",
    ]
    for name in SUBJECTS:
        fetch = result["prefetch_ms"].get(name)
        lines.append(f"| {name} | {steps[name]['median']:.1f} / {steps[name]['min']:.1f} | "
                     + (f"{fetch['gather_ms']:.1f} / {fetch['wait_ms']:.1f} | "
                        f"{fetch['pages_per_warm']:,} ({fetch['warm_ms']:.1f} ms; "
                        f"{fetch['pages_missing_per_warm']:,})" if fetch
                        else "- | -")
                     + " |")
    drop = result["drop_before_after"]
    lines += ["", "Table file pages in the page cache / mapped by the process, before and after "
                  f"one drop: {drop['cached_bytes'][0] / 1e6:,.1f} / "
                  f"{drop['rss_file_bytes'][0] / 1e6:,.1f} MB -> "
                  f"{drop['cached_bytes'][1] / 1e6:,.1f} / {drop['rss_file_bytes'][1] / 1e6:,.1f}"
                  " MB (RssFile counts every mapped file of the process)."]
    lines += ["", f"mmap overhead over the in-memory table: {result['mmap_overhead_ms']:.1f} ms "
                  "per step; hidden by the prefetch: "
                  + ("n/a (no overhead)" if hidden is None else f"{hidden:.0%}")
                  + " (target >= 80 %)."]
    return "\n".join(lines) + "\n"


def summary(result: dict) -> str:
    t = {name: s["median"] for name, s in result["step_ms"].items()}
    hidden = result["hidden_fraction"]
    return (f"step ms median: memory {t['memory']:.1f}, mmap {t['mmap']:.1f}, mmap_prefetch "
            f"{t['mmap_prefetch']:.1f}; prefetch hides "
            + ("n/a" if hidden is None else f"{hidden:.0%}") + " of the mmap overhead "
            f"({result['mmap_overhead_ms']:.1f} ms)")
