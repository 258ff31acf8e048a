"""`extmem bench pkm`: product-key memory layer vs a dense FFN of the same width, on the CPU.

One run builds both layers side by side and times, for each,
(a) inference: forward in eval mode under `torch.no_grad`;
(b) a training step: forward (train mode, usage counters on), loss = mean of squares,
    backward, dense `torch.optim.AdamW` step, `zero_grad` -- dense Adam over the whole value
    table, as in the product-key-memory anchor (REFERENCE.md section 8).
Repetitions of the two layers are interleaved (and their order alternates every round) so that
machine noise hits both alike; the median and minimum over repetitions are reported, with the
ratios memory / FFN. The input is one sequence of `tokens` hidden states (1, tokens, d_model)
that does not require a gradient (only the layers' parameters are trained).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from extmem.bench.markdown import update_section
from extmem.bench.timing import environment, peak_rss_mb, summarize, time_ms
from extmem.errors import ConfigError
from extmem.memory import Memory, MemoryConfig, ProductKeyConfig
from extmem.model.config import ModelConfig
from extmem.model.transformer import FeedForward

FFN_KINDS = ("gelu", "swiglu")

# REFERENCE.md section 8: the product-key-memory PyPI package (MIT) measured on this machine
# class, CPU, 4096 tokens, d=256, H=4, k=32, dense Adam. Not measured by this benchmark.
ANCHORS = {
    "source": "REFERENCE.md section 8",
    "note": "measured elsewhere on this machine class, not in this run",
    "setting": "CPU, 4096 tokens, d=256, heads=4, topk=32, dense Adam",
    "rows": [
        {"model": "product-key-memory (PyPI), 16K slots", "infer_ms": 204.0, "train_ms": 364.0},
        {"model": "product-key-memory (PyPI), 262K slots", "infer_ms": 275.0, "train_ms": 857.0},
        {"model": "product-key-memory (PyPI), 1M slots", "infer_ms": 382.0, "train_ms": 2093.0},
        {"model": "dense FFN d->4d->d", "infer_ms": None, "train_ms": 75.0},
    ],
}


@dataclass
class PkmBenchConfig:
    """Defaults are the anchor setting: Lample's PKM (H=4, k=32, 512^2 = 262,144 slots, key
    width 256) at d=256 over 4096 tokens, against a GELU FFN d -> 4d -> d (the anchor's FFN)."""

    tokens: int = 4096      # hidden states per forward, shaped (1, tokens, d_model)
    d_model: int = 256      # layer width; the memory's values are d_model wide (no projection)
    heads: int = 4          # product-key query heads
    topk: int = 32          # slots read per head
    key_dim: int = 256      # query width per head (two halves of key_dim // 2)
    n_keys: int = 512       # sub-keys per half: n_keys**2 slots
    ffn: str = "gelu"       # dense baseline: "gelu" (d -> 4d -> d) or "swiglu" (8/3 d hidden)
    repeats: int = 5        # timed repetitions per model and mode
    warmup: int = 2         # untimed rounds first (allocations, AdamW state, caches)
    threads: int = 0        # torch intra-op threads; 0 keeps torch's default
    seed: int = 0           # initialisation and input

    def __post_init__(self) -> None:
        minimum = {"tokens": 1, "d_model": 2, "heads": 1, "topk": 1, "key_dim": 2, "n_keys": 1,
                   "repeats": 1, "warmup": 0, "threads": 0, "seed": 0}
        for name, low in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"bench.pkm.{name}: expected an integer, got {value!r}")
            if value < low:
                raise ConfigError(f"bench.pkm.{name}: {value} must be >= {low}")
        if self.d_model % 2:
            raise ConfigError(f"bench.pkm.d_model: {self.d_model} must be even (the dense FFN "
                              "baseline is built from ModelConfig, whose rotary heads need it)")
        if self.key_dim % 2:
            raise ConfigError(f"bench.pkm.key_dim: {self.key_dim} must be even (the query is "
                              "split into two halves)")
        if self.topk > self.n_keys:
            raise ConfigError(f"bench.pkm.topk: {self.topk} is impossible with n_keys="
                              f"{self.n_keys}; allowed 1 <= topk <= n_keys")
        if self.ffn not in FFN_KINDS:
            raise ConfigError(f"bench.pkm.ffn: {self.ffn!r} is not allowed; choose one of "
                              f"{', '.join(repr(k) for k in FFN_KINDS)}")

    @property
    def slots(self) -> int:
        return self.n_keys * self.n_keys


def build_memory(cfg: PkmBenchConfig) -> Memory:
    pk = ProductKeyConfig(n_keys=cfg.n_keys, heads=cfg.heads, topk=cfg.topk, key_dim=cfg.key_dim)
    return Memory(MemoryConfig(value_dim=cfg.d_model, product_keys=pk), cfg.d_model)


def _ffn_model_config(cfg: PkmBenchConfig) -> ModelConfig:
    # n_heads=1: only the FFN is built; d_ff=0 picks 4d (gelu) or 8/3 d (swiglu)
    return ModelConfig(d_model=cfg.d_model, n_heads=1, ffn=cfg.ffn)  # type: ignore[arg-type]


def build_ffn(cfg: PkmBenchConfig) -> FeedForward:
    return FeedForward(_ffn_model_config(cfg))


def _ffn_hidden(cfg: PkmBenchConfig) -> int:
    return _ffn_model_config(cfg).ffn_hidden


def _ffn_flops_per_token(ffn: FeedForward) -> int:
    # every Linear is one multiply-add per weight per token; activations are not counted
    return sum(2 * m.weight.numel() for m in ffn.modules() if isinstance(m, nn.Linear))


class _Subject:
    """One timed layer: its module, optimizer and the two timed operations."""

    def __init__(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        self.name, self.module, self.x = name, module, x
        self.optimizer = torch.optim.AdamW(module.parameters())  # dense Adam, the anchor's
        self.infer_ms: list[float] = []
        self.train_ms: list[float] = []

    def infer(self) -> None:
        self.module.eval()
        with torch.no_grad():
            self.module(self.x)

    def train_step(self) -> None:
        self.module.train()
        loss = self.module(self.x).square().mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class _Progress:
    """Progress on stderr (a transient rich bar plus one header line), or nothing."""

    def __init__(self, bar: Progress | None, total: int) -> None:
        self._bar = bar
        self._task = bar.add_task("bench pkm", total=total) if bar is not None else None

    def step(self, description: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=description)

    def log(self, message: str) -> None:
        if self._bar is not None:
            self._bar.console.print(message)


@contextlib.contextmanager
def _progress(enabled: bool, total: int) -> Iterator[_Progress]:
    if not enabled:
        yield _Progress(None, total)
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=Console(stderr=True), transient=True,
                   refresh_per_second=2)  # light: the refresh thread shares the CPU being timed
    with bar:
        yield _Progress(bar, total)


def run_pkm_bench(cfg: PkmBenchConfig, progress: bool = True) -> dict:
    """Time the memory layer and the dense FFN in one run; return a JSON-serialisable dict."""
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _run(cfg: PkmBenchConfig, progress: bool) -> dict:
    started = time.perf_counter()
    env = environment()
    rss_start = peak_rss_mb()
    torch.manual_seed(cfg.seed)
    memory = build_memory(cfg)
    ffn = build_ffn(cfg)
    x = torch.randn(1, cfg.tokens, cfg.d_model)  # (B=1, T=tokens, d)
    subjects = [_Subject("memory", memory, x), _Subject("ffn", ffn, x)]

    rounds = cfg.warmup + cfg.repeats
    with _progress(progress, total=rounds * 4) as bar:
        bar.log(f"bench pkm: {cfg.slots:,} slots, {cfg.tokens} tokens, d={cfg.d_model}, "
                f"{torch.get_num_threads()} threads, {cfg.warmup} warmup + {cfg.repeats} timed "
                "rounds")
        for r in range(rounds):
            timed = r >= cfg.warmup
            order = subjects if r % 2 == 0 else subjects[::-1]  # alternate who goes first
            label = f"round {r + 1}/{rounds}" + ("" if timed else " (warmup)")
            for mode in ("infer", "train"):
                for s in order:
                    ms = time_ms(s.infer if mode == "infer" else s.train_step)
                    if timed:
                        (s.infer_ms if mode == "infer" else s.train_ms).append(ms)
                    bar.step(f"{label} {mode} {s.name}")

    results = {}
    for s in subjects:
        results[s.name] = {"infer_ms": summarize(s.infer_ms), "train_ms": summarize(s.train_ms),
                           "params": sum(p.numel() for p in s.module.parameters())}
    results["memory"].update({
        "slots": memory.num_slots,
        "table_params": memory.table.weight.numel(),
        "reads_per_token": memory.reads_per_token(),
        "flops_per_token": memory.flops_per_token(),
    })
    results["ffn"].update({
        "kind": cfg.ffn,
        "hidden": _ffn_hidden(cfg),
        "flops_per_token": _ffn_flops_per_token(ffn),
    })
    ratios = {}
    for mode in ("infer_ms", "train_ms"):
        for stat in ("median", "min"):
            ratios[f"{mode.removesuffix('_ms')}_{stat}"] = (
                results["memory"][mode][stat] / results["ffn"][mode][stat])
    env["torch_threads"] = torch.get_num_threads()  # as used in the run
    env["load_average_end"] = environment()["load_average"]
    return {
        "benchmark": "pkm",
        "config": asdict(cfg),
        "environment": env,
        "input_shape": list(x.shape),
        "memory": results["memory"],
        "ffn": results["ffn"],
        "ratios": ratios,  # memory / FFN
        "peak_rss_mb": {"before_build": round(rss_start, 1), "end": round(peak_rss_mb(), 1)},
        "wall_s": round(time.perf_counter() - started, 2),
        "anchors": ANCHORS,
    }


# --------------------------------------------------------------------------- Markdown report


def _ms(summary: dict) -> str:
    return f"{summary['median']:.1f} / {summary['min']:.1f}"


def _anchor_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def render_markdown(result: dict, command: str) -> str:
    """The `## pkm` section for one result of `run_pkm_bench`."""
    cfg, env, mem, ffn, ratios = (result["config"], result["environment"], result["memory"],
                                  result["ffn"], result["ratios"])
    d = cfg["d_model"]
    ffn_shape = f"{d}->{ffn['hidden']}->{d}"
    intro = (
        "Product-key memory layer (`extmem.memory.Memory`, add readout, values d_model wide) "
        f"against a dense {ffn['kind']} FFN of the same width ({ffn_shape}), measured in one run "
        "with their repetitions interleaved. Inference = forward in eval mode under "
        "`torch.no_grad`; train step = forward + backward of mean(out^2) + dense "
        "`torch.optim.AdamW` step + `zero_grad`. Input: one sequence of hidden states "
        f"{tuple(result['input_shape'])}. Times are wall-clock ms, median / min over "
        f"{cfg['repeats']} repetitions after {cfg['warmup']} warmup rounds."
    )
    environment_line = "Environment: " + ", ".join([
        f"torch {env['torch']}", f"Python {env['python']}", f"{env['platform']}",
        f"{env['cpu_count']} CPUs", f"{env['torch_threads']} torch threads",
        f"load average (1/5/15 min) {env['load_average']} at start",
        f"{env.get('load_average_end')} at end", f"{env['date_utc']}",
    ]) + (f"; process peak RSS {result['peak_rss_mb']['end']:.0f} MiB; run took "
          f"{result['wall_s']} s. On a shared machine, absolute times move with other work; "
          "the ratios, taken from interleaved repetitions, are the steadier figure.")
    mem_name = f"memory (PKM, {mem['slots']:,} slots, heads={cfg['heads']}, topk={cfg['topk']})"
    rows = [
        (mem_name, _ms(mem["infer_ms"]), _ms(mem["train_ms"]), f"{mem['params']:,}",
         f"{mem['flops_per_token']:,}"),
        (f"dense FFN ({ffn['kind']}, {ffn_shape})", _ms(ffn["infer_ms"]), _ms(ffn["train_ms"]),
         f"{ffn['params']:,}", f"{ffn['flops_per_token']:,}"),
        ("ratio memory / FFN", f"{ratios['infer_median']:.2f} / {ratios['infer_min']:.2f}",
         f"{ratios['train_median']:.2f} / {ratios['train_min']:.2f}", "", ""),
    ]
    anchor_intro = (f"Anchor numbers for reference ({ANCHORS['source']}): "
                    f"**{ANCHORS['note']}** ({ANCHORS['setting']}).")
    lines = [
        "## pkm", "", intro, "", "Command:", "", "```", command, "```", "",
        "Config: " + ", ".join(f"`{k}={v}`" for k, v in cfg.items()), "",
        environment_line, "",
        "| model | infer ms median / min | train step ms median / min | params | FLOPs/token |",
        "|---|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "", anchor_intro, "",
        "| anchor (not this run) | infer ms | train step ms |",
        "|---|---|---|",
        *(f"| {row['model']} | {_anchor_ms(row['infer_ms'])} | {_anchor_ms(row['train_ms'])} |"
          for row in ANCHORS["rows"]),
    ]
    return "\n".join(lines) + "\n"


def write_markdown(result: dict, path: Path, command: str) -> None:
    """Write or update the `## pkm` section of `path` (other sections kept), atomically."""
    update_section(Path(path), "pkm", render_markdown(result, command))
