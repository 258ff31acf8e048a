"""`extmem bench scaling`: training throughput on 1, 2, 4 ... processes (torchrun).

For each process count N in `procs` it launches
    python -m torch.distributed.run --standalone --nproc_per_node=N -m extmem train CONFIG ...
(gloo on CPU, NCCL on GPUs; docs/distributed.md) with OMP_NUM_THREADS = max(1, cores // N) for
`steps` steps (no evaluation until the end, no checkpoint before it), reads the run's
metrics.jsonl and reports tokens/s (global batch tokens per second, averaged over the logging
windows after the first, which is dropped as warm-up), the speed-up over the first process
count, and the largest train-loss difference to the first run (the same global batch, so it
should be float noise).

`config` is a run config TOML, or a built-in one (nothing to check out: the wheel alone
runs it): "quickstart" (configs/quickstart.toml: the `extmem bench model` quickstart core with
its 4,096-slot product-key memory, on the facts corpus) or "dense" (the same without memory,
configs/dense.toml). `overrides` are `--set` overrides for every training run, e.g.
["train.batch_size=16"]. The runs live in a temporary directory, deleted at the end.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from extmem.bench.markdown import command_lines
from extmem.bench.timing import environment, finish_environment, load_text, log_progress
from extmem.config import (
    apply_overrides,
    from_dict,
    read_toml,
    require,
    require_valid_fields,
    to_dict,
    write_toml,
)
from extmem.errors import TrainingError

BUILTIN = ("quickstart", "dense")


@dataclass
class ScalingBenchConfig:
    config: str = "quickstart"  # a run config TOML, or built-in "quickstart" / "dense"
    procs: list[int] = field(default_factory=lambda: [1, 2, 4])
    steps: int = 30
    log_every: int = 5          # steps per logging window (tokens/s is measured per window)
    overrides: list[str] = field(default_factory=list)  # --set for every run

    def __post_init__(self) -> None:
        p = "bench.scaling"
        require_valid_fields(self, p)
        require(isinstance(self.config, str) and bool(self.config.strip()),
                f"{p}.config: expected a run config TOML or one of {', '.join(BUILTIN)}, "
                f"got {self.config!r}")
        require(self.config in BUILTIN or Path(self.config).is_file(),
                f"{p}.config: {self.config!r} is neither a file nor a built-in config "
                f"({', '.join(BUILTIN)})")
        require(len(self.procs) > 0, f"{p}.procs: empty; list process counts, e.g. [1, 2, 4]")
        for i, n in enumerate(self.procs):
            require(isinstance(n, int) and not isinstance(n, bool) and n >= 1,
                    f"{p}.procs[{i}]: {n!r} must be an integer >= 1")
        for name in ("steps", "log_every"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                    f"{p}.{name}: {value!r} must be an integer >= 1")
        for i, text in enumerate(self.overrides):
            require(isinstance(text, str) and bool(text.partition("=")[0].strip())
                    and "=" in text, f"{p}.overrides[{i}]: {text!r} is not "
                                     "'section.key=value', e.g. 'train.batch_size=16'")


def builtin_run_config(name: str) -> dict:
    """configs/quickstart.toml or configs/dense.toml as a raw config dict."""
    from extmem.bench.model import ModelBenchConfig, model_config
    from extmem.data.config import DataConfig, FactsConfig
    from extmem.run.config import RunConfig, TrainConfig

    model, _ = model_config(name, ModelBenchConfig())
    model = dataclasses.replace(model, vocab_size=0)  # 0: the tokenizer's, as in the files
    data = DataConfig(corpus="facts", vocab_size=512, seq_len=64,
                      facts=FactsConfig(n_entities=150))
    train = TrainConfig(batch_size=32, lr=3e-3, warmup_steps=50, seed=0)
    return to_dict(RunConfig(model=model, data=data, train=train))


def run_config(cfg: ScalingBenchConfig) -> dict:
    """The raw config every launch trains: `config` + `overrides` + this benchmark's settings
    (steps, logging, no evaluation or checkpoint before the end), validated here so that a bad
    field fails before torchrun starts."""
    from extmem.run.config import RunConfig

    raw = builtin_run_config(cfg.config) if cfg.config in BUILTIN else read_toml(cfg.config)
    raw = apply_overrides(raw, [*cfg.overrides, f"train.steps={cfg.steps}",
                                "train.eval_every=0", f"train.log_every={cfg.log_every}",
                                "train.checkpoint_every=0"])
    from_dict(RunConfig, copy.deepcopy(raw))
    return raw


def launch(config: Path, procs: int, out: Path) -> dict:
    """Train `config` on `procs` torchrun processes into `out`; tokens/s and train losses."""
    threads = max(1, (os.cpu_count() or 1) // procs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={procs}", "-m", "extmem", "train", str(config),
               "--out", str(out), "--quiet"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        tail = " | ".join(done.stderr.strip().splitlines()[-5:])
        raise TrainingError(f"bench scaling: {procs} processes exited with {done.returncode}; "
                            f"the output ends: {tail}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    timed = train[1:] or train  # the first window holds the warm-up
    return {"procs": procs, "threads_per_proc": threads,
            "tokens_per_s": round(sum(r["tokens_per_s"] for r in timed) / len(timed), 1),
            "launch_s": round(time.perf_counter() - started, 2),
            "losses": [r["loss"] for r in train]}


def run_scaling_bench(cfg: ScalingBenchConfig, progress: bool = True) -> dict:
    """One training run per process count; JSON-serialisable."""
    started = time.perf_counter()
    env = environment()
    raw = run_config(cfg)
    with tempfile.TemporaryDirectory(prefix="extmem-scaling-") as tmp:
        config = Path(tmp) / "config.toml"
        write_toml(config, raw)
        results = []
        for n in cfg.procs:
            log_progress(progress, f"bench scaling: {n} process{'es' if n > 1 else ''}, "
                                   f"{cfg.steps} steps")
            results.append(launch(config, n, Path(tmp) / f"p{n}"))
    base_speed, base_losses = results[0]["tokens_per_s"], results[0]["losses"]
    for r in results:
        r["speedup"] = round(r["tokens_per_s"] / base_speed, 3)
        r["max_loss_diff_vs_first"] = max(abs(a - b) for a, b in
                                          zip(r.pop("losses"), base_losses, strict=True))
    finish_environment(env)
    return {"benchmark": "scaling", "config": asdict(cfg), "environment": env,
            "run_config": raw, "results": results,
            "wall_s": round(time.perf_counter() - started, 2)}


# --------------------------------------------------------------------------- Markdown report


def render_markdown(result: dict, command: str) -> str:
    """The `## scaling` section for one result of `run_scaling_bench`."""
    cfg, env, raw = result["config"], result["environment"], result["run_config"]
    train = raw.get("train", {})
    lines = [
        "## scaling", "",
        f"Training throughput of `{cfg['config']}` (batch {train.get('batch_size')} x "
        f"{raw.get('data', {}).get('seq_len')} tokens, {cfg['steps']} steps) on 1 torchrun "
        "process and more (`--standalone`, gloo on CPU, NCCL on GPUs), OMP_NUM_THREADS = "
        "cores // processes: global batch tokens per second over the logging windows after the "
        f"first ({cfg['log_every']} steps each), and the largest train-loss difference to the "
        "first run (the same global batch: float noise).", "",
        *command_lines(command),
        f"Environment: torch {env['torch']}, {env['cpu_count']} CPUs, {load_text(env)}, "
        f"{env['date_utc']}; run took {result['wall_s']} s.", "",
        "| processes | threads each | tokens/s | vs first | max loss difference |",
        "|---|---|---|---|---|",
    ]
    for r in result["results"]:
        lines.append(f"| {r['procs']} | {r['threads_per_proc']} | {r['tokens_per_s']:,.0f} | "
                     f"{r['speedup']:.2f}x | {r['max_loss_diff_vs_first']:.2g} |")
    return "\n".join(lines) + "\n"


def summary(result: dict) -> str:
    return "\n".join(f"{r['procs']} process{'es' if r['procs'] > 1 else ''} x "
                     f"{r['threads_per_proc']} threads: "
                     f"{r['tokens_per_s']:,.0f} tokens/s ({r['speedup']:.2f}x), max loss "
                     f"difference {r['max_loss_diff_vs_first']:.2g}" for r in result["results"])
