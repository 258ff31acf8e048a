"""`extmem bench optimizer`: AdamW's for-loop vs fused implementation on memory models.

On CPU torch runs AdamW as a loop of ~10 elementwise ops per tensor unless asked for its fused
kernel (one pass per tensor; on CPU from torch 2.4). A memory model's tables hold most of its
parameters (a 2^16-row table at d = 32 is 2.1M values against the core's 64K), so the
optimizer step can cost as much as the forward and backward of the small core. extmem builds
AdamW fused wherever it runs (extmem.train.optim.adamw). This benchmark times, side by side in
one run (`timed_rounds`), both implementations on the models of the capacity experiment
(docs/results.md, claim 16: the d = 32 core, 4 layers, batch 32 x 64 tokens, the default
param groups):
- dense: the core alone;
- pkm16 / pkm18: product keys (Lample et al. 2019) beside layer 2's FFN, 4 heads x top-8,
  key width 32, 2^16 / 2^18 slots;
- peer16: PEER (He 2024), 2^16 single-neuron experts by the same product keys;
- ngram: hashed bigrams + trigrams (Engram, Cheng et al. 2026), 2 hashes, 32,768 rows at
  layers 0 and 1.
Per model: the optimizer step alone (`optimizer_ms`, gradients of one backward pass kept) and
the whole training step (`step_ms`: forward, cross-entropy, backward, clipping, optimizer
step, zero_grad; eager, where the sweeps compile the dense parts, so the optimizer's share
here is a lower bound).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

import torch

from extmem.bench.markdown import command_lines, environment_line
from extmem.bench.model import TrainStep
from extmem.bench.timing import (
    environment,
    finish_environment,
    log_progress,
    timed_rounds,
    torch_threads,
    warm_up,
)
from extmem.config import require_valid_fields
from extmem.errors import ConfigError
from extmem.memory import ExpertsConfig, MemoryConfig, NgramLookupConfig, ProductKeyConfig
from extmem.memory.kernels.backend import active_backend
from extmem.model.config import ModelConfig
from extmem.run.config import TrainConfig

BenchModel = Literal["dense", "pkm16", "pkm18", "peer16", "ngram"]
MODELS: tuple[str, ...] = get_args(BenchModel)
IMPLEMENTATIONS = ("for-loop", "fused")


@dataclass
class OptimizerBenchConfig:
    d_model: int = 32
    n_layers: int = 4
    n_heads: int = 4
    vocab_size: int = 512
    batch_size: int = 32
    seq_len: int = 64
    models: list[BenchModel] = field(default_factory=lambda: list(MODELS))
    repeats: int = 10
    warmup: int = 2
    threads: int = 1        # torch threads (the sweeps' workers run one each); 0 = torch's
    seed: int = 0

    def __post_init__(self) -> None:
        require_valid_fields(self, "bench.optimizer")
        if not self.models:
            raise ConfigError("bench.optimizer.models: empty; list at least one of "
                              f"{', '.join(MODELS)}")
        for name in ("d_model", "n_layers", "n_heads", "vocab_size", "batch_size", "seq_len",
                     "repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"bench.optimizer.{name}: must be >= 1")
        if self.threads < 0:
            raise ConfigError(f"bench.optimizer.threads: {self.threads} must be >= 0")


def _memories(name: str, cfg: OptimizerBenchConfig) -> list[MemoryConfig]:
    """The capacity sweep's memory of `name` (configs/sweeps/capacity.toml)."""
    if name == "dense":
        return []
    if name == "ngram":
        return [MemoryConfig(layers=[0, 1], placement="input", lookup="ngram", readout="gated",
                             ngram=NgramLookupConfig(orders=[2, 3], heads=2, rows=32768))]
    keys = ProductKeyConfig(n_keys=512 if name == "pkm18" else 256, heads=4, topk=8, key_dim=32)
    experts = name == "peer16"
    return [MemoryConfig(layers=[cfg.n_layers // 2], placement="parallel_ffn",
                         lookup="product_keys", readout="experts" if experts else "add",
                         product_keys=keys,
                         **({"experts": ExpertsConfig(hidden=1)} if experts else {}))]


def _train_step(name: str, implementation: str, cfg: OptimizerBenchConfig) -> TrainStep:
    """Model `name` with one AdamW implementation; both get the same initial weights."""
    model_cfg = ModelConfig(vocab_size=cfg.vocab_size, d_model=cfg.d_model, n_layers=cfg.n_layers,
                            n_heads=cfg.n_heads, ffn="swiglu", max_seq_len=max(128, cfg.seq_len),
                            memories=_memories(name, cfg))
    subject = TrainStep(model_cfg, TrainConfig(), cfg.batch_size, cfg.seq_len, cfg.seed)
    if implementation == "for-loop":  # before the first step: state is made per group
        for group in subject.optimizer.param_groups:
            group["fused"] = None
    return subject


def _optimizer_step(subject: TrainStep) -> Callable[[], None]:
    """The optimizer step alone, on the gradients of one backward pass (made at first call)."""
    def step() -> None:
        if next(subject.model.parameters()).grad is None:
            subject.backward()
        subject.optimizer.step()
    return step


def run_optimizer_bench(cfg: OptimizerBenchConfig, progress: bool = True) -> dict:
    started = time.perf_counter()
    env = environment()
    with torch_threads(cfg.threads):
        env["torch_threads"] = torch.get_num_threads()
        # the numba kernels run only where torch owns every numba thread (kernels/backend.py):
        # with threads = 1, start it as the sweeps' workers are, NUMBA_NUM_THREADS=1
        kernels = active_backend(torch.zeros(1))
        subjects = {f"{name}/{impl}": _train_step(name, impl, cfg)
                    for name in cfg.models for impl in IMPLEMENTATIONS}
        log_progress(progress, f"bench optimizer: {len(subjects)} subjects, {cfg.warmup} warmup "
                               f"+ {cfg.repeats} interleaved rounds")
        ops = {key: {"step_ms": s.step, "optimizer_ms": _optimizer_step(s)}
               for key, s in subjects.items()}
        warm_up(ops, cfg.warmup)
        timings = timed_rounds(ops, cfg.repeats)
    tokens = cfg.batch_size * cfg.seq_len
    models = {}
    for name in cfg.models:
        entry: dict = {"params": subjects[f"{name}/fused"].params}
        for impl in IMPLEMENTATIONS:
            entry[impl] = {op: timings[f"{name}/{impl}"][op] for op in ("step_ms", "optimizer_ms")}
            entry[impl]["tokens_per_s"] = round(
                tokens / (entry[impl]["step_ms"]["median"] / 1000), 1)
        entry["step_speedup"] = round(entry["fused"]["tokens_per_s"]
                                      / entry["for-loop"]["tokens_per_s"], 3)
        entry["optimizer_speedup"] = round(entry["for-loop"]["optimizer_ms"]["median"]
                                           / entry["fused"]["optimizer_ms"]["median"], 3)
        models[name] = entry
    finish_environment(env)
    return {"benchmark": "optimizer", "config": asdict(cfg), "environment": env, "kernels": kernels,
            "tokens_per_step": tokens, "models": models,
            "wall_s": round(time.perf_counter() - started, 2)}


def render_markdown(result: dict, command: str) -> str:
    cfg = result["config"]
    lines = [
        "## optimizer", "",
        "AdamW, torch's for-loop implementation vs its fused kernel (extmem's default, "
        "extmem.train.optim.adamw), on the capacity experiment's models (d = "
        f"{cfg['d_model']}, {cfg['n_layers']} layers, vocabulary {cfg['vocab_size']}, batch "
        f"{cfg['batch_size']} x {cfg['seq_len']} tokens, {cfg['threads'] or 'default'} torch "
        f"thread(s), eager, kernel back-end {result['kernels']}), median over "
        f"{cfg['repeats']} interleaved rounds after {cfg['warmup']} warmup. Optimizer step "
        "alone and the whole training step.", "",
        *command_lines(command),
        environment_line(result),
        "", "| model | params | optimizer ms for-loop / fused | speedup | step ms for-loop / "
        "fused | tokens/s for-loop / fused | speedup |", "|---|---|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        loop, fused = m["for-loop"], m["fused"]
        lines.append(f"| {name} | {m['params']:,} | {loop['optimizer_ms']['median']:.1f} / "
                     f"{fused['optimizer_ms']['median']:.1f} | {m['optimizer_speedup']:.2f}x | "
                     f"{loop['step_ms']['median']:.1f} / {fused['step_ms']['median']:.1f} | "
                     f"{loop['tokens_per_s']:,.0f} / {fused['tokens_per_s']:,.0f} | "
                     f"{m['step_speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def summary(result: dict) -> str:
    return "\n".join(f"{name}: optimizer step {m['optimizer_speedup']:.2f}x, training step "
                     f"{m['step_speedup']:.2f}x faster fused ({m['fused']['tokens_per_s']:,.0f} "
                     "tokens/s)" for name, m in result["models"].items())

