"""`extmem bench capacity`: inference latency of each lookup type as the table grows.

Capacity without latency (docs/performance.md). For table sizes 2^14 .. 2^24 rows (or the
largest that fits in memory), one value table of d-wide fp32 rows is built per size and shared by one
`Memory` per lookup type (product keys with n = sqrt(N) sub-keys per half, token ids, hashed
n-grams, LSH buckets, learned router); each memory's forward (eval, no_grad, add readout) over
(1, tokens, d) hidden states is timed. `latency_growth` = latency at the largest size /
latency at the smallest, per lookup; the headline is product keys. The router scores all N
entries per token (O(N) by design), so it is timed only up to `router_max_rows`. Each size also
times the gather floor of the product-key read pattern: one `F.embedding_bag` of tokens x H*k
random rows of the same table. Its own growth is what the memory hierarchy alone costs: a
2^14-row table (16 MiB at d = 256) sits largely in cache, a 2^24-row one (16 GiB) does not.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from extmem.allocator import release_free_memory
from extmem.bench.markdown import command_lines, environment_line, update_section
from extmem.bench.timing import environment, finish_environment, log_progress, summarize, time_ms
from extmem.config import require_valid_fields
from extmem.errors import ConfigError
from extmem.memory import (
    EngramConfig,
    LshLookupConfig,
    Memory,
    MemoryConfig,
    NgramLookupConfig,
    ProductKeyConfig,
    RouterLookupConfig,
    TokenLookupConfig,
    ValueTable,
)
from extmem.memory.config import LOOKUPS, Lookup
from extmem.model.resources import available_ram_bytes

FLOOR = "gather_floor"  # the product-key read pattern as one embedding bag, no lookup


@dataclass
class CapacityBenchConfig:
    tokens: int = 4096
    d_model: int = 256
    log2_rows: list[int] = field(default_factory=lambda: [14, 16, 18, 20, 22, 24])  # even
    lookups: list[Lookup] = field(default_factory=lambda: list(LOOKUPS))
    heads: int = 4              # product keys / LSH heads
    topk: int = 32              # product keys
    key_dim: int = 256          # product keys
    router_max_rows: int = 1 << 16
    repeats: int = 7
    warmup: int = 2
    seed: int = 0
    plot: bool = True           # capacity.png in the output directory (`write_plots`)

    def __post_init__(self) -> None:
        require_valid_fields(self, "bench.capacity")
        if not self.log2_rows or any(e < 4 or e % 2 for e in self.log2_rows):
            raise ConfigError(f"bench.capacity.log2_rows: {self.log2_rows} must be even "
                              "exponents >= 4 (product keys need N = n^2)")
        if not self.lookups:
            raise ConfigError("bench.capacity.lookups: empty; list at least one of "
                              f"{', '.join(LOOKUPS)}")
        for name in ("tokens", "d_model", "heads", "topk", "key_dim", "repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"bench.capacity.{name}: must be >= 1")
        if self.topk > 2 ** (min(self.log2_rows) // 2):
            raise ConfigError(f"bench.capacity.topk: {self.topk} exceeds the sub-keys of the "
                              "smallest table")


def _engram(rows: int, cfg: CapacityBenchConfig) -> MemoryConfig:
    """Engram with about `rows` rows over its 2 orders x `heads` prime-sized tables (each head
    reads one row; its table is built to its own prime sizes, a little above `rows`)."""
    per_head = max(2, rows // (2 * cfg.heads))
    return MemoryConfig(lookup="engram", readout="engram", value_dim=cfg.d_model,
                        engram=EngramConfig(heads=cfg.heads, rows_per_head=per_head,
                                            compress_tokens=False))


# lookup name -> the memory config of about `rows` table rows that the benchmark times
MEMORY_CONFIGS = {
    "product_keys": lambda rows, cfg: MemoryConfig(
        lookup="product_keys", value_dim=cfg.d_model, product_keys=ProductKeyConfig(
            n_keys=math.isqrt(rows), heads=cfg.heads, topk=cfg.topk, key_dim=cfg.key_dim)),
    "token": lambda rows, cfg: MemoryConfig(lookup="token", value_dim=cfg.d_model,
                                            token=TokenLookupConfig(rows=rows)),
    "ngram": lambda rows, cfg: MemoryConfig(lookup="ngram", value_dim=cfg.d_model,
                                            ngram=NgramLookupConfig(rows=rows)),
    "lsh": lambda rows, cfg: MemoryConfig(lookup="lsh", value_dim=cfg.d_model, lsh=LshLookupConfig(
        bits=int(math.log2(rows // cfg.heads)), heads=cfg.heads)),
    "router": lambda rows, cfg: MemoryConfig(lookup="router", value_dim=cfg.d_model,
                                             router=RouterLookupConfig(entries=rows, topk=cfg.topk)),
    "engram": _engram,
}


def memory_config(name: str, rows: int, cfg: CapacityBenchConfig) -> MemoryConfig:
    return MEMORY_CONFIGS[name](rows, cfg)


def run_capacity_bench(cfg: CapacityBenchConfig, progress: bool = True) -> dict:
    started = time.perf_counter()
    env = environment()
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(1, cfg.tokens, cfg.d_model, generator=g)  # (1, T, d)
    vocab = 1 << 20
    ids = torch.randint(0, vocab, (1, cfg.tokens), generator=g)  # (1, T)
    rows_out, skipped = [], []
    for exp in cfg.log2_rows:
        rows = 1 << exp
        need = rows * cfg.d_model * 4 + rows * 24  # table + usage counters
        avail = available_ram_bytes()
        if avail is not None and need * 1.15 + (1 << 30) > avail:
            skipped.append({"rows": rows, "reason": f"needs ~{need / 2**30:.1f} GiB, "
                            f"{avail / 2**30:.1f} GiB available"})
            break
        log_progress(progress, f"bench capacity: 2^{exp} rows")
        torch.manual_seed(cfg.seed)
        table = ValueTable(rows, cfg.d_model)
        entry: dict = {"rows": rows, "log2_rows": exp, "latency_ms": {}}
        for name in cfg.lookups:
            if name == "router" and rows > cfg.router_max_rows:
                continue
            mcfg = memory_config(name, rows, cfg)
            own_table = mcfg.num_slots(vocab) != rows  # engram: prime-sized tables of its own
            memory = Memory(mcfg, cfg.d_model, vocab_size=vocab,
                            table=None if own_table else table).eval()
            with torch.no_grad():
                def run(memory: Memory = memory) -> None:
                    memory(x, input_ids=ids)
                for _ in range(cfg.warmup):
                    run()
                entry["latency_ms"][name] = summarize([time_ms(run) for _ in range(cfg.repeats)])
            del memory, run  # the closure holds the memory, which holds the table
        entry["latency_ms"][FLOOR] = time_gather_floor(table.weight.detach(), cfg)
        rows_out.append(entry)
        del table
        gc.collect()
        release_free_memory()  # the next size's fit check reads MemAvailable
    growth = {}
    for name in [*cfg.lookups, FLOOR]:
        series = [(r["rows"], r["latency_ms"][name]["median"]) for r in rows_out
                  if name in r["latency_ms"]]
        if len(series) >= 2:
            growth[name] = {"from_rows": series[0][0], "to_rows": series[-1][0],
                            "ratio": round(series[-1][1] / series[0][1], 3)}
    finish_environment(env)
    result = {"benchmark": "capacity", "config": asdict(cfg), "environment": env,
              "sizes": rows_out, "skipped": skipped, "growth": growth,
              "latency_growth": growth.get("product_keys", {}).get("ratio"),
              "wall_s": round(time.perf_counter() - started, 2)}
    return result


def time_gather_floor(weight: torch.Tensor, cfg: CapacityBenchConfig) -> dict:
    """`F.embedding_bag` of tokens x heads*topk random rows of `weight` with weights (ms)."""
    g = torch.Generator().manual_seed(cfg.seed)
    reads = cfg.heads * cfg.topk
    idx = torch.randint(0, weight.shape[0], (cfg.tokens, reads), generator=g)  # (T, H*k)
    w = torch.rand(cfg.tokens, reads, generator=g)  # (T, H*k)

    def run() -> None:
        with torch.no_grad():
            F.embedding_bag(idx, weight, mode="sum", per_sample_weights=w)
    for _ in range(cfg.warmup):
        run()
    return summarize([time_ms(run) for _ in range(cfg.repeats)])


def write_plots(result: dict, out: Path) -> list[Path]:
    """capacity.png in `out` (unless the config's `plot` is false); records its name in
    `result["plot"]`, which the Markdown links relative to itself."""
    if not result["config"]["plot"]:
        return []
    path = Path(plot_capacity(result, Path(out) / "capacity.png"))
    result["plot"] = path.name
    return [path]


def plot_capacity(result: dict, path: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in [*result["config"]["lookups"], FLOOR]:
        pts = [(r["log2_rows"], r["latency_ms"][name]["median"]) for r in result["sizes"]
               if name in r["latency_ms"]]
        if pts:
            style = {"linestyle": "--", "color": "black"} if name == FLOOR else {}
            ax.plot(*zip(*pts, strict=True), marker="o", label=name.replace("_", " "), **style)
    ax.set_xlabel("table rows (log2)")
    ax.set_ylabel("inference latency, ms (median)")
    ax.set_yscale("log")
    cfg = result["config"]
    ax.set_title(f"bench capacity: {cfg['tokens']} tokens, d={cfg['d_model']}, CPU fp32")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def render_markdown(result: dict, command: str) -> str:
    cfg = result["config"]
    names = [*cfg["lookups"], FLOOR]
    lines = [
        "## capacity", "",
        f"Inference latency (ms, median over {cfg['repeats']}) of one memory forward (eval, "
        f"no_grad, add readout) over (1, {cfg['tokens']}, {cfg['d_model']}) hidden states, as "
        "the fp32 value table grows. Product keys: heads="
        f"{cfg['heads']}, topk={cfg['topk']}, key width {cfg['key_dim']}, n = sqrt(rows) "
        "sub-keys per half. The router is O(rows) by design and is timed up to "
        f"{cfg['router_max_rows']:,} rows. gather_floor: one `F.embedding_bag` of "
        f"{cfg['tokens']} x {cfg['heads'] * cfg['topk']} random rows of the same table (the "
        "product-key read pattern with no lookup): its growth is the memory hierarchy's alone.",
        "",
        *command_lines(command),
        environment_line(result),
        "", "| rows | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
    ]
    for r in result["sizes"]:
        cells = [f"{r['latency_ms'][n]['median']:.1f}" if n in r["latency_ms"] else "-"
                 for n in names]
        lines.append(f"| 2^{r['log2_rows']} | " + " | ".join(cells) + " |")
    lines += ["", "latency growth (largest / smallest table): " + ", ".join(
        f"{n} {g['ratio']:.2f}x ({g['from_rows']:,} -> {g['to_rows']:,})"
        for n, g in result["growth"].items()) + "."]
    for s in result["skipped"]:
        lines.append(f"Not measured: {s['rows']:,} rows ({s['reason']}).")
    if result.get("plot"):
        lines += ["", f"![capacity curve]({Path(result['plot']).name})"]
    return "\n".join(lines) + "\n"


def write_markdown(result: dict, path: Path, command: str) -> None:
    update_section(Path(path), "capacity", render_markdown(result, command))


def summary(result: dict) -> str:
    return "\n".join(f"{k}: latency growth x{v['ratio']} ({v['from_rows']:,} -> "
                     f"{v['to_rows']:,} rows)" for k, v in result["growth"].items())
