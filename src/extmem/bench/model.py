"""`extmem bench model`: whole-model training throughput, dense vs memory models.

Target (docs/benchmarks.md): training tokens/s of a model carrying one 1M-slot product-key
memory >= 0.7x the dense baseline's. Models share the quickstart core (configs/quickstart.toml:
d=128, 4 layers, 4 heads, SwiGLU, vocabulary 512, batch 32 x 64 tokens):
- dense: no memory (configs/dense.toml);
- quickstart: its 4,096-slot PKM at layer 2 (dense AdamW, the default param groups);
- pkm_1m_sparse: the same memory with 1024^2 = 1,048,576 slots, row-sparse table + lazy Adam;
- pkm_1m_dense: the 1M-slot memory trained densely (AdamW over the whole table), for reference.
Each step = forward, next-token cross-entropy, backward, clipping (train.grad_clip), optimizer
step, zero_grad on random token batches; rounds interleave the models (`timed_rounds`: order
reversed every other round, each timed step after an untimed step of the same model).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from extmem.bench.markdown import command_lines, environment_line, update_section
from extmem.bench.timing import environment, finish_environment, log_progress, timed_rounds, warm_up
from extmem.config import require_valid_fields
from extmem.errors import ConfigError
from extmem.memory import MemoryConfig, ProductKeyConfig
from extmem.model.config import ModelConfig
from extmem.model.transformer import Transformer
from extmem.run.config import ParamGroupConfig, TrainConfig, default_param_groups
from extmem.train.optim import build_optimizer
from extmem.train.sparse_optim import clip_grad_norm

BenchModel = Literal["dense", "quickstart", "pkm_1m_sparse", "pkm_1m_dense"]
MODELS: tuple[str, ...] = get_args(BenchModel)


@dataclass
class ModelBenchConfig:
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    vocab_size: int = 512
    batch_size: int = 32
    seq_len: int = 64
    big_n_keys: int = 1024  # the "1M" memory: n_keys**2 slots
    models: list[BenchModel] = field(default_factory=lambda: list(MODELS))
    repeats: int = 5
    warmup: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        require_valid_fields(self, "bench.model")
        if not self.models:
            raise ConfigError("bench.model.models: empty; list at least one of "
                              f"{', '.join(MODELS)}")
        for name in ("d_model", "n_layers", "n_heads", "vocab_size", "batch_size", "seq_len",
                     "big_n_keys", "repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"bench.model.{name}: must be >= 1")


def _memory(n_keys: int, sparse: bool, n_layers: int) -> MemoryConfig:
    # configs/quickstart.toml's memory (layer 2 of 4: the middle), with n_keys changed
    pk = ProductKeyConfig(n_keys=n_keys, heads=4, topk=8, key_dim=64, query_norm="layernorm")
    return MemoryConfig(layers=[n_layers // 2], placement="parallel_ffn", lookup="product_keys",
                        readout="add", product_keys=pk, sparse_updates=sparse)


def model_config(name: str, cfg: ModelBenchConfig) -> tuple[ModelConfig, TrainConfig]:
    core = ModelConfig(vocab_size=cfg.vocab_size, d_model=cfg.d_model, n_layers=cfg.n_layers,
                       n_heads=cfg.n_heads, ffn="swiglu", max_seq_len=max(128, cfg.seq_len))
    train = TrainConfig()
    if name == "dense":
        return core, train
    if name == "quickstart":
        return dataclasses.replace(core, memories=[_memory(64, False, cfg.n_layers)]), train
    sparse = name == "pkm_1m_sparse"
    groups = default_param_groups()
    if sparse:
        groups = [dataclasses.replace(g, optimizer="lazy_adam") if g.name == "memory_values"
                  else g for g in groups]
    assert all(isinstance(g, ParamGroupConfig) for g in groups)
    model = dataclasses.replace(core, memories=[_memory(cfg.big_n_keys, sparse, cfg.n_layers)])
    return model, dataclasses.replace(train, param_groups=groups)


class TrainStep:
    """One model's training step on a fixed random token batch, as the model benchmarks time
    it (here and bench/optimizer.py): forward, next-token cross-entropy, backward, clipping
    (train.grad_clip), optimizer step (build_optimizer), zero_grad."""

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, batch_size: int,
                 seq_len: int, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = Transformer(model_cfg)
        self.optimizer, _ = build_optimizer(self.model, train_cfg)
        self.clip = train_cfg.grad_clip
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, model_cfg.vocab_size, (batch_size, seq_len + 1), generator=g)
        self.params = sum(p.numel() for p in self.model.parameters())

    def backward(self) -> None:
        """Forward, loss and backward, gradients clipped: what the optimizer step consumes."""
        self.model.train()
        logits = self.model(self.ids[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), self.ids[:, 1:].flatten())
        loss.backward()
        clip_grad_norm(self.model.parameters(), self.clip)

    def step(self) -> None:
        self.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def run_model_bench(cfg: ModelBenchConfig, progress: bool = True) -> dict:
    started = time.perf_counter()
    env = environment()
    subjects = {name: TrainStep(*model_config(name, cfg), cfg.batch_size, cfg.seq_len, cfg.seed)
                for name in cfg.models}
    log_progress(progress, f"bench model: {len(subjects)} models, {cfg.warmup} warmup + {cfg.repeats} "
                   "interleaved rounds")
    ops = {name: {"step_ms": s.step} for name, s in subjects.items()}
    warm_up(ops, cfg.warmup)
    timings = timed_rounds(ops, cfg.repeats)
    tokens = cfg.batch_size * cfg.seq_len
    models = {}
    for name, s in subjects.items():
        summary = timings[name]["step_ms"]
        models[name] = {"params": s.params, "step_ms": summary,
                          "tokens_per_s": round(tokens / (summary["median"] / 1000), 1)}
    ratios = {}
    if "dense" in models:
        base = models["dense"]["tokens_per_s"]
        ratios = {f"{name}_vs_dense": round(m["tokens_per_s"] / base, 3)
                  for name, m in models.items() if name != "dense"}
    finish_environment(env)
    return {"benchmark": "model", "config": asdict(cfg), "environment": env,
            "tokens_per_step": tokens, "models": models, "throughput_vs_dense": ratios,
            "wall_s": round(time.perf_counter() - started, 2)}


def render_markdown(result: dict, command: str) -> str:
    cfg = result["config"]
    lines = [
        "## model", "",
        "Whole-model training throughput (forward, cross-entropy, backward, clipping, optimizer "
        f"step) of the quickstart core (d={cfg['d_model']}, {cfg['n_layers']} layers, SwiGLU, "
        f"vocabulary {cfg['vocab_size']}, batch {cfg['batch_size']} x {cfg['seq_len']} tokens), "
        f"median over {cfg['repeats']} interleaved rounds after {cfg['warmup']} warmup (each timed "
        "step after an untimed step of the same model). "
        "pkm_1m_*: the quickstart memory (layer 2, heads=4, topk=8, key width 64) with "
        f"{cfg['big_n_keys'] ** 2:,} slots; _sparse = row-sparse table + lazy Adam, _dense = "
        "AdamW over the whole table.", "",
        *command_lines(command),
        environment_line(result),
        "", "| model | params | step ms median / min | tokens/s | vs dense |", "|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        ratio = result["throughput_vs_dense"].get(f"{name}_vs_dense", 1.0 if name == "dense" else None)
        lines.append(f"| {name} | {m['params']:,} | {m['step_ms']['median']:.0f} / "
                     f"{m['step_ms']['min']:.0f} | {m['tokens_per_s']:,.0f} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines) + "\n"


def write_markdown(result: dict, path: Path, command: str) -> None:
    update_section(Path(path), "model", render_markdown(result, command))


def summary(result: dict) -> str:
    return "\n".join(f"{k}: {m['tokens_per_s']:,.0f} tokens/s"
                     + (f" ({result['throughput_vs_dense'][k + '_vs_dense']:.2f}x dense)"
                        if k + "_vs_dense" in result["throughput_vs_dense"] else "")
                     for k, m in result["models"].items())
