"""`extmem bench pkm`: our product-key memory vs the `product-key-memory` PyPI package.

The targets' setting (docs/benchmarks.md): CPU, one sequence of `tokens` hidden states
(1, tokens, d), H=4 heads, top-32, key width 256 (two halves of 128), values d wide, at
16K / 262K / 1M / 4M slots. For each size, one run times:
- ours: `extmem.memory.Memory` (add readout) with a row-sparse table trained by lazy Adam
  (`sparse_updates`; other parameters AdamW): inference (eval, no_grad) and a training step
  (forward, backward of mean(out^2), optimizer step, zero_grad);
- the peer: `product_key_memory.PKM` (needs the `bench` extra) with dense `torch.optim.AdamW`
  over all its parameters, same operations;
- the gather floor: `F.embedding_bag` forward with per-sample weights reading tokens x H*k
  random rows of the same table (the bandwidth floor of the read pattern);
and once, the dense GELU FFN d -> 4d -> d (inference and training step, AdamW).
Subjects are timed side by side: after warmup, each of `repeats` rounds runs every subject's
inference and then every subject's training step, in an order reversed every other round, so
that drift in the machine's speed reaches all of them alike; each timed call follows an untimed
call of the same operation, so no subject is timed right after another's. Where ours and the peer do not
fit in memory together (4M slots), they are timed one after the other. Each subject's peak RSS
is that of one training step taken while it is the only subject alive: VmHWM after handing
free heap back and resetting it (/proc/self/clear_refs). Ratios: `infer_speedup_vs_peer` =
peer / ours, `train_speedup_vs_peer` = peer / ours, `infer_vs_gather_floor` = ours / floor
(medians).
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from extmem.allocator import release_free_memory
from extmem.bench.markdown import command_lines, update_section
from extmem.bench.timing import (
    Ops,
    environment,
    finish_environment,
    load_text,
    log_progress,
    peak_rss_mb,
    proc_status_bytes,
    timed_rounds,
    torch_threads,
    warm_up,
)
from extmem.config import require_valid_fields
from extmem.errors import ConfigError
from extmem.memory import Memory, MemoryConfig, ProductKeyConfig
from extmem.model.config import ModelConfig
from extmem.model.resources import available_ram_bytes
from extmem.model.transformer import FeedForward
from extmem.train.sparse_optim import LazyAdam, OptimizerSet, RowwiseAdagrad

TARGET_SIZE = 1024  # n_keys of the 1M-slot target setting


@dataclass
class PkmBenchConfig:
    tokens: int = 4096
    d_model: int = 256
    heads: int = 4
    topk: int = 32
    key_dim: int = 256
    n_keys: list[int] = field(default_factory=lambda: [128, 512, 1024, 2048])  # 16K..4M slots
    # ours: table optimizer (adamw = dense table gradient)
    optimizer: Literal["lazy_adam", "rowwise_adagrad", "adamw"] = "lazy_adam"
    # ours: "bfloat16" halves the bytes per row read (fp32 sums)
    table_dtype: Literal["float32", "bfloat16"] = "float32"
    peer: bool = True       # time product-key-memory (skipped with a note if not installed)
    repeats: int = 7
    warmup: int = 2
    threads: int = 0        # torch intra-op threads; 0 keeps torch's default
    seed: int = 0

    def __post_init__(self) -> None:
        require_valid_fields(self, "bench.pkm")
        for name, low in {"tokens": 1, "d_model": 2, "heads": 1, "topk": 1, "key_dim": 2,
                          "repeats": 1, "warmup": 0, "threads": 0, "seed": 0}.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"bench.pkm.{name}: {value!r} must be an integer >= {low}")
        if self.key_dim % 2:
            raise ConfigError(f"bench.pkm.key_dim: {self.key_dim} must be even")
        if not self.n_keys or any(n < self.topk for n in self.n_keys):
            raise ConfigError(f"bench.pkm.n_keys: {self.n_keys} must be non-empty, each >= "
                              f"topk={self.topk}")


def peer_available() -> bool:
    try:
        import product_key_memory  # noqa: F401
    except ImportError:
        return False
    return True


def _peer_version() -> str | None:
    try:
        from importlib.metadata import version
        return version("product-key-memory")
    except Exception:  # noqa: BLE001 - metadata lookup only
        return None


def build_ours(cfg: PkmBenchConfig, n_keys: int) -> tuple[nn.Module, object]:
    pk = ProductKeyConfig(n_keys=n_keys, heads=cfg.heads, topk=cfg.topk, key_dim=cfg.key_dim)
    sparse = cfg.optimizer != "adamw"
    memory = Memory(MemoryConfig(value_dim=cfg.d_model, product_keys=pk, sparse_updates=sparse,
                                 table_dtype=cfg.table_dtype), cfg.d_model)
    table = [memory.table.weight]
    rest = [p for n, p in memory.named_parameters() if n != "table.weight"]
    if not sparse:
        return memory, torch.optim.AdamW(memory.parameters())
    table_opt = (LazyAdam(table, lr=1e-3) if cfg.optimizer == "lazy_adam"
                 else RowwiseAdagrad(table, lr=1e-2))
    return memory, OptimizerSet({cfg.optimizer: table_opt, "adamw": torch.optim.AdamW(rest)})


def build_peer(cfg: PkmBenchConfig, n_keys: int) -> tuple[nn.Module, object]:
    from product_key_memory import PKM
    peer = PKM(dim=cfg.d_model, heads=cfg.heads, num_keys=n_keys, topk=cfg.topk,
               dim_head=cfg.key_dim // 2)
    return peer, torch.optim.AdamW(peer.parameters())


def build_ffn(cfg: PkmBenchConfig) -> tuple[nn.Module, object]:
    ffn = FeedForward(ModelConfig(d_model=cfg.d_model, n_heads=1, ffn="gelu"))
    return ffn, torch.optim.AdamW(ffn.parameters())


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _vm_hwm_mb() -> float:
    hwm = proc_status_bytes("VmHWM").get("VmHWM")
    return peak_rss_mb() if hwm is None else hwm / (1 << 20)


def subject_ops(module: nn.Module, optimizer: object, x: torch.Tensor) -> Ops:
    """Inference (eval, no_grad) and one training step (forward, backward of mean(out^2),
    optimizer step, zero_grad) of a module."""
    def infer() -> None:
        module.eval()
        with torch.no_grad():
            module(x)

    def train_step() -> None:
        module.train()
        module(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return {"infer_ms": infer, "train_ms": train_step}


def gather_ops(weight: torch.Tensor, cfg: PkmBenchConfig) -> Ops:
    """The floor: one `F.embedding_bag` forward reading tokens x H*k random rows of `weight`."""
    g = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randint(0, weight.shape[0], (cfg.tokens, cfg.heads * cfg.topk), generator=g)
    w = torch.rand(cfg.tokens, cfg.heads * cfg.topk, generator=g).to(weight.dtype)

    def run() -> None:
        with torch.no_grad():
            F.embedding_bag(idx, weight, mode="sum", per_sample_weights=w)

    return {"infer_ms": run}


def peak_train_rss(ops: Ops) -> dict:
    """Peak RSS (MiB) of one training step, with free heap handed back first: VmHWM after
    resetting it (exact per subject when only this subject is alive)."""
    release_free_memory()
    exact = _reset_peak()
    ops["train_ms"]()
    return {"peak_rss_train_mb": round(_vm_hwm_mb(), 1), "peak_is_per_subject": exact}


def _free() -> None:
    """Collect the last subject and hand its freed heap back to the OS, so that the next
    subject's peak RSS starts from live memory only (the CLI keeps freed memory otherwise)."""
    gc.collect()
    release_free_memory()


def _fits(state_bytes: int, row: dict | None, who: str) -> bool:
    """Skip a subject whose persistent state would not fit in available memory (the OOM
    killer ends the whole run otherwise); records why in `row["skipped"]`."""
    avail = available_ram_bytes()
    if avail is None:
        return True
    need = state_bytes * 1.2 + (2 << 30)  # + transients of a step (measured ~1-2 GiB)
    if need <= avail:
        return True
    if row is None:  # a check only: nothing to record
        return False
    row.setdefault("skipped", {})[who] = (f"needs ~{need / 2**30:.1f} GiB (state "
                                          f"{state_bytes / 2**30:.1f} GiB + step transients), "
                                          f"{avail / 2**30:.1f} GiB available")
    return False


def run_pkm_bench(cfg: PkmBenchConfig, progress: bool = True) -> dict:
    """All sizes, ours vs peer vs gather floor, plus the dense FFN, in one run."""
    with torch_threads(cfg.threads):
        return _run(cfg, progress)


def _run(cfg: PkmBenchConfig, progress: bool) -> dict:
    started = time.perf_counter()
    env = environment()
    torch.manual_seed(cfg.seed)
    x = torch.randn(1, cfg.tokens, cfg.d_model)  # (B=1, T=tokens, d)
    peer_ok = cfg.peer and peer_available()
    ffn, ffn_opt = build_ffn(cfg)
    log_progress(progress, "bench pkm: dense FFN")
    ffn_ops = {"ffn": subject_ops(ffn, ffn_opt, x)}
    warm_up(ffn_ops, cfg.warmup)
    ffn_result = {**timed_rounds(ffn_ops, cfg.repeats)["ffn"], **peak_train_rss(ffn_ops["ffn"])}
    del ffn, ffn_opt, ffn_ops
    _free()
    sizes = []
    for n in cfg.n_keys:
        row: dict = {"n_keys": n, "slots": n * n}
        try:
            _measure_size(cfg, n, x, row, peer_ok, progress)
        except (MemoryError, RuntimeError) as exc:  # out of memory at the largest sizes
            row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        _free()
        row["ratios"] = _ratios(row)
        sizes.append(row)
    headline = next((r for r in sizes if r["n_keys"] == TARGET_SIZE and "error" not in r),
                    sizes[-1])
    env["torch_threads"] = torch.get_num_threads()
    finish_environment(env)
    env["product_key_memory"] = _peer_version()
    return {
        "benchmark": "pkm",
        "config": asdict(cfg),
        "environment": env,
        "input_shape": list(x.shape),
        "ffn": ffn_result,
        "sizes": sizes,
        "headline_slots": headline["slots"],
        **headline["ratios"],
        "peer_measured": peer_ok,
        "wall_s": round(time.perf_counter() - started, 2),
    }


def _measure_size(cfg: PkmBenchConfig, n: int, x: torch.Tensor, row: dict, peer_ok: bool,
                  progress: bool) -> None:
    """One table size: ours, the gather floor and the peer timed side by side (interleaved
    rounds) when both fit in memory at once, else one after the other; each subject's peak
    RSS measured while it is the only subject alive."""
    table_bytes = n * n * cfg.d_model * 4  # fp32 (the peer's; ours is <= this)
    if not _fits(4 * table_bytes, row, "ours"):  # table, m, v + row buffers/grad
        return
    log_progress(progress, f"bench pkm: {n * n:,} slots: ours")
    module, opt = build_ours(cfg, n)
    subjects = {"ours": subject_ops(module, opt, x),
                "gather_floor": gather_ops(module.table.weight.detach(), cfg)}
    warm_up(subjects, cfg.warmup)
    peaks = {"ours": peak_train_rss(subjects["ours"])}
    # values, dense grad, exp_avg, exp_avg_sq + AdamW's foreach temporaries (~2 more
    # table-sized tensors: a 4M-slot peer step was OOM-killed at 23 GiB RSS here)
    peer_bytes = 6 * table_bytes
    together = peer_ok and _fits(peer_bytes, None, "peer")  # alongside ours?
    if together:
        log_progress(progress, f"bench pkm: {n * n:,} slots: product-key-memory, interleaved with ours")
        peer, peer_opt = build_peer(cfg, n)
        subjects["peer"] = subject_ops(peer, peer_opt, x)
    warm_up(subjects, cfg.warmup)  # all again: the peak measurement handed free heap back
    row.update(timed_rounds(subjects, cfg.repeats))
    row["interleaved"] = together
    del module, opt, subjects["ours"], subjects["gather_floor"]
    _free()
    if not together and peer_ok and _fits(peer_bytes, row, "peer"):
        log_progress(progress, f"bench pkm: {n * n:,} slots: product-key-memory")
        peer, peer_opt = build_peer(cfg, n)
        subjects["peer"] = subject_ops(peer, peer_opt, x)
        warm_up(subjects, cfg.warmup)
        row.update(timed_rounds(subjects, cfg.repeats))
    if "peer" in subjects:
        peaks["peer"] = peak_train_rss(subjects["peer"])
    for who, peak in peaks.items():
        row[who].update(peak)


def _median(row: dict, who: str, mode: str) -> float | None:
    entry = row.get(who)
    return None if entry is None else entry[mode]["median"]


def _ratios(row: dict) -> dict:
    ours_i, ours_t = _median(row, "ours", "infer_ms"), _median(row, "ours", "train_ms")
    peer_i, peer_t = _median(row, "peer", "infer_ms"), _median(row, "peer", "train_ms")
    floor = _median(row, "gather_floor", "infer_ms")
    out: dict = {"infer_speedup_vs_peer": None, "train_speedup_vs_peer": None,
                 "infer_vs_gather_floor": None, "peak_train_rss_vs_peer": None}
    if ours_i and peer_i:
        out["infer_speedup_vs_peer"] = round(peer_i / ours_i, 3)
    if ours_t and peer_t:
        out["train_speedup_vs_peer"] = round(peer_t / ours_t, 3)
    if ours_i and floor:
        out["infer_vs_gather_floor"] = round(ours_i / floor, 3)
    if "ours" in row and "peer" in row:
        out["peak_train_rss_vs_peer"] = round(row["ours"]["peak_rss_train_mb"]
                                              / row["peer"]["peak_rss_train_mb"], 3)
    return out


# --------------------------------------------------------------------------- Markdown report


def _ms(entry: dict | None, mode: str) -> str:
    return "-" if entry is None else f"{entry[mode]['median']:.0f} / {entry[mode]['min']:.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_markdown(result: dict, command: str) -> str:
    cfg, env = result["config"], result["environment"]
    lines = [
        "## pkm", "",
        "Our product-key memory (row-sparse table, `" + cfg["optimizer"] + "` on the table, AdamW "
        "elsewhere) against `product-key-memory` " + str(env.get("product_key_memory")) +
        " (dense AdamW, as installed by most users), the embedding-bag gather floor of the "
        "same read pattern and a dense GELU FFN d -> 4d -> d, all in one run. Inference = "
        "forward in eval mode under `torch.no_grad`; train step = forward + backward of "
        "mean(out^2) + optimizer step + `zero_grad`. Input (1, "
        f"{cfg['tokens']}, {cfg['d_model']}); heads={cfg['heads']}, topk={cfg['topk']}, key "
        f"width {cfg['key_dim']}, our table {cfg.get('table_dtype', 'float32')} (sums in fp32), "
        "everything else fp32. Times are wall-clock ms, median / min over "
        f"{cfg['repeats']} interleaved rounds after {cfg['warmup']} warmup (subjects alternate "
        "within each round, each timed call after an untimed call of the same operation; at "
        "sizes where ours and the peer do not fit together they run one after the other). "
        "Peak RSS: VmHWM of one training step with only that subject alive.",
        "", *command_lines(command),
        "Environment: " + ", ".join([
            f"torch {env['torch']}", f"Python {env['python']}", str(env["platform"]),
            f"{env['cpu_count']} CPUs", f"{env['torch_threads']} torch threads",
            load_text(env), str(env["date_utc"])]) +
        f"; run took {result['wall_s']} s. No GPU on this machine: no GPU timings.", "",
        "| slots | ours infer | peer infer | gather floor | ours train | peer train | "
        "infer speedup | train speedup | infer / floor | peak RSS ours / peer MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["sizes"]:
        r = row["ratios"]
        peak = "-"
        if "ours" in row:
            peer_peak = row["peer"]["peak_rss_train_mb"] if "peer" in row else None
            peak = f"{row['ours']['peak_rss_train_mb']:.0f} / " + (
                "-" if peer_peak is None else f"{peer_peak:.0f}")
        lines.append(
            f"| {row['slots']:,} | {_ms(row.get('ours'), 'infer_ms')} | "
            f"{_ms(row.get('peer'), 'infer_ms')} | {_ms(row.get('gather_floor'), 'infer_ms')} | "
            f"{_ms(row.get('ours'), 'train_ms')} | {_ms(row.get('peer'), 'train_ms')} | "
            f"{_ratio(r['infer_speedup_vs_peer'])} | {_ratio(r['train_speedup_vs_peer'])} | "
            f"{_ratio(r['infer_vs_gather_floor'])} | {peak} |")
        if "error" in row:
            lines.append(f"| {row['slots']:,} | not measured: {row['error']} |||||||||")
        for who, why in row.get("skipped", {}).items():
            lines.append(f"| {row['slots']:,} | {who} not measured: {why} |||||||||")
    ffn = result["ffn"]
    lines += ["", f"Dense FFN (gelu, {cfg['d_model']}->{4 * cfg['d_model']}->{cfg['d_model']}): "
              f"infer {_ms(ffn, 'infer_ms')} ms, train step {_ms(ffn, 'train_ms')} ms.", ""]
    return "\n".join(lines) + "\n"


def write_markdown(result: dict, path: Path, command: str) -> None:
    """Write or update the `## pkm` section of `path` (other sections kept), atomically."""
    update_section(Path(path), "pkm", render_markdown(result, command))


def summary(result: dict) -> str:
    lines = []
    for row in result["sizes"]:
        r = row["ratios"]
        lines.append(f"{row['slots']:>10,} slots: infer x{r['infer_speedup_vs_peer']} vs peer, "
                     f"train x{r['train_speedup_vs_peer']} vs peer, "
                     f"{r['infer_vs_gather_floor']} x gather floor"
                     + (f" ({row['error']})" if "error" in row else ""))
    return "\n".join(lines)
