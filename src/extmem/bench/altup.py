"""`extmem bench altup`: training-step time of AltUp against dense models of width d and 2d,
or of Sequence-AltUp against token dropping (Baykal et al. 2023, sections 3 and 4).

`models = "blocks"` (default), claim 4 (docs/results.md): AltUp K=2 should land near dense-d
step time (d-wide layers) while its token is 2d wide. One run builds the tiny causal LMs side
by side -- dense-d, AltUp K=2 (standard: 2d embedding and output head), Recycled-AltUp K=2 (d
embedding) and dense-2d. `models = "sequence"`, claim 8: dense-d, Sequence-AltUp K (the layers
run on one position of every K, the others predicted and corrected) and token dropping at the
same kept fraction (the skipped positions pass through: `skipped = "pass"`). It times one
training step of each: forward, next-token cross-entropy, backward, `AdamW.step`,
`zero_grad`. Repetitions are interleaved (the order rotates every round) so machine noise hits
every model alike; the median and minimum over repetitions are reported with the ratios to
dense-d. The step-time ratios are the figure to quote; absolute times move with machine load.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from extmem.altup import AltUpConfig
from extmem.bench.markdown import command_lines
from extmem.bench.timing import (
    environment,
    finish_environment,
    load_text,
    log_progress,
    peak_rss_mb,
    summarize,
    time_ms,
    torch_threads,
)
from extmem.errors import ConfigError
from extmem.model import ModelConfig, Transformer, flops_per_token, parameter_counts

MODEL_SETS = ("blocks", "sequence")


@dataclass
class AltUpBenchConfig:
    """Defaults are the core of configs/dense.toml and configs/altup/*.toml (d=128, 4 layers,
    4 heads, SwiGLU, vocabulary 512) on one training batch of that shape (32 x 64 tokens)."""

    d_model: int = 128      # dense-d and AltUp layer width; dense-2d is twice as wide
    n_layers: int = 4
    n_heads: int = 4        # dense-2d keeps the head count (head width doubles)
    vocab_size: int = 512
    batch_size: int = 32
    seq_len: int = 64
    k: int = 2              # AltUp blocks (blocks) / positions per group (sequence)
    models: str = "blocks"  # "blocks": dense-d, AltUp, Recycled-AltUp, dense-2d; "sequence":
                            # dense-d, Sequence-AltUp, token dropping at the same kept fraction
    repeats: int = 10       # timed rounds; each round times every model once
    warmup: int = 2         # untimed rounds first (allocations, AdamW state)
    threads: int = 0        # torch intra-op threads; 0 keeps torch's default
    seed: int = 0

    def __post_init__(self) -> None:
        minimum = {"d_model": 2, "n_layers": 1, "n_heads": 1, "vocab_size": 2, "batch_size": 1,
                   "seq_len": 1, "k": 2, "repeats": 1, "warmup": 0, "threads": 0, "seed": 0}
        for name, low in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"bench.altup.{name}: expected an integer, got {value!r}")
            if value < low:
                raise ConfigError(f"bench.altup.{name}: {value} must be >= {low}")
        if self.models not in MODEL_SETS:
            raise ConfigError(f"bench.altup.models: {self.models!r} is not a model set; "
                              f"allowed: {', '.join(MODEL_SETS)}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"bench.altup.d_model: {self.d_model} must be a multiple of "
                              f"n_heads={self.n_heads} with an even head width (rotary)")

    def model_configs(self) -> dict[str, ModelConfig]:
        """The compared models, in table order."""
        def model(d_model: int, altup: AltUpConfig | None = None) -> ModelConfig:
            return ModelConfig(vocab_size=self.vocab_size, d_model=d_model,
                               n_layers=self.n_layers, n_heads=self.n_heads,
                               max_seq_len=self.seq_len, altup=altup)
        d = self.d_model
        if self.models == "sequence":
            return {
                "dense-d": model(d),
                f"sequence-altup-k{self.k}": model(d, AltUpConfig(mode="sequence", k=self.k)),
                f"token-dropping-k{self.k}": model(d, AltUpConfig(mode="sequence", k=self.k,
                                                                  skipped="pass")),
            }
        return {
            "dense-d": model(d),
            f"altup-k{self.k}": model(d, AltUpConfig(k=self.k)),
            f"recycled-k{self.k}": model(d, AltUpConfig(k=self.k, embedding="recycled")),
            "dense-2d": model(2 * d),
        }


class _Subject:
    """One timed model with its optimizer and batch."""

    def __init__(self, name: str, cfg: ModelConfig, tokens: torch.Tensor) -> None:
        self.name, self.cfg, self.tokens = name, cfg, tokens
        self.model = Transformer(cfg)
        self.optimizer = torch.optim.AdamW(self.model.parameters())
        self.step_ms: list[float] = []

    def train_step(self) -> None:
        self.model.train()
        logits = self.model(self.tokens[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), self.tokens[:, 1:].flatten())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def row(self, seq_len: int) -> dict:
        params = parameter_counts(self.model)
        altup = self.cfg.altup
        return {
            "name": self.name,
            "layer_width": self.cfg.d_model,
            "token_width": self.model.lm_head.in_features,
            "altup": None if altup is None else asdict(altup),
            "params": {key: params[key] for key in ("core", "embeddings", "total")},
            "flops_per_token": flops_per_token(self.model, seq_len),
            "step_ms": summarize(self.step_ms),
        }


def _ratios(samples: list[float], base: list[float]) -> dict[str, float]:
    """Step-time ratios to the baseline: `paired` is the median of the per-round ratios (both
    timed in the same round, so under the same machine load: the steadiest figure on a shared
    machine), `median` / `min` the ratios of the medians / minima."""
    paired = statistics.median(a / b for a, b in zip(samples, base, strict=True))
    return {"paired": paired, "median": statistics.median(samples) / statistics.median(base),
            "min": min(samples) / min(base)}


def run_altup_bench(cfg: AltUpBenchConfig, progress: bool = True) -> dict:
    """Time every model's training step in one run; return a JSON-serialisable dict."""
    with torch_threads(cfg.threads):
        return _run(cfg, progress)


def _run(cfg: AltUpBenchConfig, progress: bool) -> dict:
    started = time.perf_counter()
    env = environment()
    torch.manual_seed(cfg.seed)
    tokens = torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.seq_len + 1))  # (B, T+1)
    subjects = [_Subject(name, model_cfg, tokens)
                for name, model_cfg in cfg.model_configs().items()]
    rounds = cfg.warmup + cfg.repeats
    log_progress(progress, f"bench altup: {', '.join(s.name for s in subjects)}; batch "
                   f"{cfg.batch_size} x {cfg.seq_len}, {torch.get_num_threads()} threads, "
                   f"{cfg.warmup} warmup + {cfg.repeats} timed rounds")
    for r in range(rounds):
        shift = r % len(subjects)  # rotate who goes first
        for s in subjects[shift:] + subjects[:shift]:
            ms = time_ms(s.train_step)
            if r >= cfg.warmup:
                s.step_ms.append(ms)
        log_progress(progress, f"round {r + 1}/{rounds}" + ("" if r >= cfg.warmup else " (warmup)"))

    rows = [s.row(cfg.seq_len) for s in subjects]
    base = subjects[0].step_ms
    for s, row in zip(subjects, rows, strict=True):
        row["ratio_to_dense_d"] = _ratios(s.step_ms, base)
    env["torch_threads"] = torch.get_num_threads()
    finish_environment(env)
    return {
        "benchmark": "altup",
        "config": asdict(cfg),
        "environment": env,
        "models": rows,
        "ratios": {f"{row['name']}/dense-d": row["ratio_to_dense_d"]["paired"]
                   for row in rows[1:]},  # median of the per-round ratios
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "wall_s": round(time.perf_counter() - started, 2),
    }


# --------------------------------------------------------------------------- Markdown report


def section_name(result: dict) -> str:
    """`altup` for the blocks set, `altup-sequence-kK` for the sequence set at each K
    (docs/benchmarks.md keeps one section per set and K)."""
    cfg = result["config"]
    return f"altup-sequence-k{cfg['k']}" if cfg.get("models") == "sequence" else "altup"


def render_markdown(result: dict, command: str) -> str:
    """The `## altup` section for one result of `run_altup_bench`."""
    cfg, env = result["config"], result["environment"]
    models = (f"dense-d, Sequence-AltUp K={cfg['k']} (the layers run on one position of "
              f"every {cfg['k']}, the others predicted and corrected) and token dropping at the "
              f"same kept fraction (skipped positions pass through)"
              if cfg.get("models") == "sequence" else
              f"dense-d, AltUp K={cfg['k']} (standard: {cfg['k']}d embedding and output head, "
              f"d-wide layers), Recycled-AltUp K={cfg['k']} (d embedding) and dense-2d")
    lines = [
        f"## {section_name(result)}",
        "",
        f"One training step (forward, next-token cross-entropy, backward, `AdamW.step`, "
        f"`zero_grad`) of tiny causal LMs ({cfg['n_layers']} layers, {cfg['n_heads']} heads, "
        f"SwiGLU, vocabulary {cfg['vocab_size']}, batch {cfg['batch_size']} x "
        f"{cfg['seq_len']} tokens): {models}, all in one run with their repetitions interleaved. Times "
        f"are wall-clock ms, median / min over {cfg['repeats']} repetitions after "
        f"{cfg['warmup']} warmup rounds; the ratio to dense-d is the median of the per-round "
        f"ratios (both steps timed in the same round, under the same load), then the ratios of "
        f"the medians and of the minima. FLOPs/token are forward FLOPs from "
        f"`extmem.model.flops_per_token`.",
        "",
        *command_lines(command),
        "Config: " + ", ".join(f"`{k}={v}`" for k, v in cfg.items()),
        "",
        f"Environment: torch {env['torch']}, Python {env['python']}, {env['platform']}, "
        f"{env['cpu_count']} CPUs, {env['torch_threads']} torch threads, {load_text(env)}, "
        f"{env['date_utc']}; process peak RSS {result['peak_rss_mb']:.0f} MiB; run took "
        f"{result['wall_s']:.2f} s. On a shared machine, absolute times move with other work; "
        "the ratios, taken from interleaved repetitions, are the steadier figure.",
        "",
        "| model | layer width | token width | params core / embeddings | FLOPs/token "
        "| step ms median / min | ratio to dense-d: paired / median / min |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["models"]:
        step, ratio, params = row["step_ms"], row["ratio_to_dense_d"], row["params"]
        lines.append(
            f"| {row['name']} | {row['layer_width']} | {row['token_width']} "
            f"| {params['core']:,} / {params['embeddings']:,} "
            f"| {row['flops_per_token']['total']:,} "
            f"| {step['median']:.1f} / {step['min']:.1f} "
            f"| {ratio['paired']:.2f} / {ratio['median']:.2f} / {ratio['min']:.2f} |")
    return "\n".join(lines) + "\n"


def summary(result: dict) -> str:
    return "\n".join(f"{row['name']} (token width {row['token_width']}): step "
                     f"{row['step_ms']['median']:.1f} ms median, {row['step_ms']['min']:.1f} min, "
                     f"{row['ratio_to_dense_d']['paired']:.2f}x dense-d"
                     for row in result["models"])
